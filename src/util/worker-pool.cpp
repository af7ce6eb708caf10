// The kernel thread pool (see worker-pool.h).
#include "util/worker-pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define PEFT_PAUSE() _mm_pause()
#else
#define PEFT_PAUSE() std::this_thread::yield()
#endif

namespace peft {

namespace {

// How long an idle worker keeps polling for the next task before it sleeps. A decode step calls the
// kernels dozens of times, a few tens of microseconds apart; waking a sleeping worker costs ~30 us here
// (futex + IPI on this VM), as long as the task itself. Polling yields the core (sched_yield) between
// looks, so that a BLAS thread that wants the core gets it (a worker spinning on `pause` took the core
// from OpenBLAS's threads between two kernels: 8-row decode 27 ms without spinning, 40 ms with 100 us).
constexpr auto kPoll = std::chrono::microseconds(200);

thread_local bool t_inside = false;

class Pool {
 public:
  explicit Pool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto & t : workers_) t.join();
  }
  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t n, int64_t chunks, const std::function<void(int64_t, int64_t)> & fn) {
    std::lock_guard<std::mutex> one_at_a_time(run_mu_);
    fn_ = &fn;
    n_ = n;
    chunks_ = chunks;
    pending_.store(chunks - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> g(mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    chunk(0);
    while (pending_.load(std::memory_order_acquire) > 0) PEFT_PAUSE();
  }

 private:
  void chunk(int64_t c) {
    const int64_t per = (n_ + chunks_ - 1) / chunks_, a = c * per, b = std::min(n_, a + per);
    if (a < b) {
      t_inside = true;
      (*fn_)(a, b);
      t_inside = false;
    }
  }
  void work(int id) {
    uint64_t seen = 0;  // (the generation at construction: a task posted before this thread ran is still seen)
    while (true) {
      const auto until = std::chrono::steady_clock::now() + kPoll;
      uint64_t g = generation_.load(std::memory_order_acquire);
      for (int k = 0; g == seen; ++k) {
        if (k < 64) PEFT_PAUSE();
        else std::this_thread::yield();
        g = generation_.load(std::memory_order_acquire);
        if (g == seen && (k & 15) == 0 && std::chrono::steady_clock::now() > until) {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
          g = generation_.load(std::memory_order_acquire);
        }
      }
      seen = g;
      if (stop_) return;
      if (id < chunks_) {
        chunk(id);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> pending_{0};
  const std::function<void(int64_t, int64_t)> * fn_ = nullptr;
  int64_t n_ = 0, chunks_ = 1;
  bool stop_ = false;
};

std::mutex g_mu;
int g_threads = 0;  // 0 = all cores
std::unique_ptr<Pool> g_pool;

Pool & pool() {
  std::lock_guard<std::mutex> g(g_mu);
  // (hardware_concurrency reads a sysfs file each time: once is enough)
  static const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int want = g_threads > 0 ? g_threads : cores;
  if (!g_pool || g_pool->threads() != want) g_pool = std::make_unique<Pool>(want);
  return *g_pool;
}

}  // namespace

void set_matmul_threads(int n) {
  std::lock_guard<std::mutex> g(g_mu);
  g_threads = std::max(0, n);
}

int matmul_threads() { return pool().threads(); }

void parallel_rows(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)> & fn) {
  if (n <= 0) return;
  const int64_t chunks = t_inside ? 1 : std::min<int64_t>(pool().threads(), std::max<int64_t>(1, n / std::max<int64_t>(1, grain)));
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  pool().run(n, chunks, fn);
}

}  // namespace peft
