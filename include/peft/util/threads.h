// Thread setup for CPU runs. GEMMs run in OpenBLAS's own threads; LibTorch's OpenMP intra-op workers
// spin-wait between ops and, on a small machine, starve the BLAS threads (measured here: a 128-token
// prefill took 205-560 ms with 2 OpenMP + 2 BLAS threads on 2 cores, 60 ms with 1 + 2). So by default
// BLAS gets every core and LibTorch's element-wise ops one thread.
#pragma once

namespace peft {

/// blas_threads: OpenBLAS threads (0 = all cores); intra_op_threads: LibTorch's OpenMP pool.
/// Returns the BLAS thread count applied (0 if the BLAS library offers no control).
int configure_threads(int blas_threads = 0, int intra_op_threads = 1);

}  // namespace peft
