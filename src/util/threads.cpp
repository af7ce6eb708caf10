#include "peft/util/threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <algorithm>
#include <thread>

namespace peft {

int configure_threads(int blas_threads, int intra_op_threads) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(std::max(1, intra_op_threads));
  const int n = blas_threads > 0 ? blas_threads : cores;
  // OpenBLAS is reached through the system BLAS; look its control function up at run time so that
  // other BLAS libraries (and CUDA builds) link too
  using SetFn = void (*)(int);
  auto set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (!set) return 0;
  set(n);
  return n;
}

}  // namespace peft
