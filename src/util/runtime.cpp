#include "peft/util/runtime.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <malloc.h>

#include <algorithm>
#include <climits>
#include <thread>

namespace peft {

int configure_runtime(const RuntimeOptions & o) {
  if (o.reuse_freed_memory) {
    // serve large blocks from the heap and keep freed ones: buffers of the same sizes are reused from
    // one step to the next instead of being unmapped and faulted in again
    mallopt(M_MMAP_THRESHOLD, INT_MAX);
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
  }
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(std::max(1, o.intra_op_threads));
  const int n = o.blas_threads > 0 ? o.blas_threads : cores;
  // OpenBLAS is reached through the system BLAS; look its control function up at run time so that
  // other BLAS libraries (and CUDA builds) link too
  using SetFn = void (*)(int);
  auto set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (!set) return 0;
  set(n);
  return n;
}

}  // namespace peft
