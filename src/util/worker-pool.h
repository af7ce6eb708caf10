// Threads for the hand-written matrix-product kernels (quantized and small-M linears). LibTorch's own
// intra-op pool is kept at one thread (see peft/util/runtime.h: its spinning workers starve BLAS), so these
// kernels split their rows over a pool of their own, as many threads as BLAS gets. Workers keep polling
// for ~200 us after a task, yielding the core between looks (back-to-back kernels of a decode step reuse
// them at once, a BLAS thread that wants the core gets it), then sleep.
#pragma once
#include <cstdint>
#include <functional>

namespace peft {

/// Threads for parallel_rows (configure_runtime sets it to the BLAS thread count; default all cores).
void set_matmul_threads(int n);
int matmul_threads();

/// fn(begin, end) over [0, n) in up to matmul_threads() contiguous chunks of at least `grain` rows; the
/// calling thread runs the first chunk. Returns when all are done. Calls from inside fn run inline.
void parallel_rows(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)> & fn);

}  // namespace peft
