#include "peft/util/runtime.h"

#include <fstream>

#include "peft/error.h"
#include "util/worker-pool.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <sched.h>
#include <malloc.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <thread>

namespace peft {

int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

namespace {
// a positive integer environment variable, or 0
int env_count(const char * name) {
  const char * v = std::getenv(name);
  if (!v || !*v) return 0;
  char * end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return *end == '\0' && n > 0 && n <= 4096 ? static_cast<int>(n) : 0;
}
}  // namespace

int default_blas_threads(std::string * why) {
  if (const int n = env_count("OMP_NUM_THREADS")) {
    if (why) *why = "OMP_NUM_THREADS";
    return n;
  }
  const int cores = usable_cores();
  const int local = env_count("LOCAL_WORLD_SIZE");
  if (local > 1) {
    if (why) *why = str(cores, " cores / ", local, " processes (LOCAL_WORLD_SIZE)");
    return std::max(1, cores / local);
  }
  if (why) *why = str(cores, " cores");
  return cores;
}

int configure_runtime(const RuntimeOptions & o) {
  if (o.reuse_freed_memory) {
    // serve large blocks from the heap and keep freed ones: buffers of the same sizes are reused from
    // one step to the next instead of being unmapped and faulted in again
    mallopt(M_MMAP_THRESHOLD, INT_MAX);
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
  }
  at::set_num_threads(std::max(1, o.intra_op_threads));
  const int n = o.blas_threads > 0 ? o.blas_threads : default_blas_threads();
  set_matmul_threads(n);  // the hand-written matrix kernels use as many threads as BLAS
  // OpenBLAS is reached through the system BLAS; look its control function up at run time so that
  // other BLAS libraries (and CUDA builds) link too
  using SetFn = void (*)(int);
  auto set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (!set) return 0;
  set(n);
  return n;
}

uint64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

int64_t process_status_kb(const std::string & key) {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  }
  return -1;
}

uint64_t peak_rss_bytes() {
  const int64_t kb = process_status_kb("VmHWM");
  return kb > 0 ? static_cast<uint64_t>(kb) * 1024 : 0;
}

bool reset_peak_rss() {
  // freed heap memory still counts as resident: hand it back first, so the new peak is of live memory
  ::malloc_trim(0);
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

void check_memory_for(uint64_t bytes, const std::string & what) {
  const uint64_t avail = available_memory_bytes();
  if (avail == 0 || bytes <= avail) return;
  auto gb = [](uint64_t b) { return str(static_cast<double>(b / (1ull << 20)) / 1024.0, " GB"); };
  fail(str(what, " needs ", gb(bytes), ", ", gb(avail), " available"));
}

}  // namespace peft
