// Process-wide settings for CPU runs: threads and the allocator. Measured on the 2-core machines this
// project builds on (see docs/design/compile.md, "Threads" and "Memory"):
// - GEMMs run in OpenBLAS's own threads; LibTorch's OpenMP intra-op workers spin-wait between ops and
//   starve them (a 128-token prefill took 205-560 ms with 2 OpenMP + 2 BLAS threads, 60 ms with 1 + 2).
//   So by default BLAS gets the cores and LibTorch's element-wise ops one thread.
// - Processes on one machine share its cores: by default each gets cores / LOCAL_WORLD_SIZE BLAS threads
//   (`peft train --nproc-per-node N` and torchrun set it), and OMP_NUM_THREADS, where set, wins as torchrun
//   means it (it sets 1 for several processes per node). Never more threads than cores in all.
// - glibc returns large freed blocks to the OS (mmap/munmap), so every training step page-faults its
//   activations in again; keeping freed memory for reuse made a training step ~20% faster.
#pragma once
#include <cstdint>
#include <string>

namespace peft {

struct RuntimeOptions {
  int blas_threads = 0;      // OpenBLAS threads, 0 = default_blas_threads()
  int intra_op_threads = 1;  // LibTorch's OpenMP pool
  bool reuse_freed_memory = true;
};

/// Cores this process may run on (its CPU affinity: taskset, cgroup cpusets), at least 1.
int usable_cores();

/// BLAS threads when none are asked for: OMP_NUM_THREADS if set (a positive integer), else usable_cores()
/// divided by LOCAL_WORLD_SIZE (processes of one data-parallel job on this machine), at least 1. `why`
/// receives the reason ("2 cores / 2 processes (LOCAL_WORLD_SIZE)").
int default_blas_threads(std::string * why = nullptr);

/// Apply the options. Returns the BLAS thread count applied (0 if the BLAS library offers no control).
int configure_runtime(const RuntimeOptions & o = {});

/// Memory the kernel reports as available for new allocations (MemAvailable), in bytes; 0 if unknown.
uint64_t available_memory_bytes();

/// A field of /proc/self/status in kB ("VmHWM": peak resident, "VmRSS", "RssAnon"); -1 if absent.
int64_t process_status_kb(const std::string & key);
/// The process's peak resident memory (VmHWM) since it started or since reset_peak_rss(), in bytes; 0 if unknown.
uint64_t peak_rss_bytes();
/// Start the peak over from the current resident memory (Linux >= 4.0), after handing freed heap memory
/// back to the system (malloc_trim), so that the new peak is of live memory; false where the kernel refuses.
bool reset_peak_rss();

/// Refuse an allocation of `bytes` for `what` that the machine cannot hold, before trying it (a huge
/// allocation would otherwise be granted lazily and end with the kernel killing the process).
void check_memory_for(uint64_t bytes, const std::string & what);

}  // namespace peft
