// A small persistent fork-join pool. A job is a chunked range whose chunks are claimed through
// one atomic counter, so uneven chunks balance themselves; the calling thread works too, which
// makes one thread mean "no pool". Between jobs, workers (and the caller waiting for them) spin
// for a short while before sleeping on a condition variable: a model step issues many small
// jobs back to back, and a futex wake-up costs more than such a job.
#include "moeweave/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace moeweave {
namespace {

thread_local bool in_pool_task = false;

constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// True as soon as done() holds; false when kSpin passed without it.
template <typename Done>
bool spin_until(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 1;; ++i) {
    if (done()) return true;
    cpu_relax();
    if (i % 256 == 0 && std::chrono::steady_clock::now() > deadline) return false;
  }
}

int default_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

class Pool {
 public:
  ~Pool() { resize_workers(0); }

  int threads() const { return threads_.load(); }
  void set_threads(int n) { threads_.store(std::max(1, n)); }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>((n + grain - 1) / grain, 4 * threads()));
    if (chunks == 1 || threads() == 1 || in_pool_task) {
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> serial(run_mutex_);  // one job at a time; other callers queue
    resize_workers(threads() - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      n_ = n;
      chunks_ = chunks;
      next_.store(0);
      pending_.store(static_cast<int>(workers_.size()));
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    work();
    if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return pending_.load() == 0; });
    }
    fn_ = nullptr;
  }

 private:
  void work() {
    in_pool_task = true;
    for (int64_t c = next_.fetch_add(1); c < chunks_; c = next_.fetch_add(1)) {
      const int64_t begin = n_ * c / chunks_, end = n_ * (c + 1) / chunks_;
      if (begin < end) (*fn_)(begin, end);
    }
    in_pool_task = false;
  }

  void resize_workers(int count) {
    if (static_cast<int>(workers_.size()) == count) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_from_.store(std::min<int>(count, static_cast<int>(workers_.size())));
    }
    wake_.notify_all();
    while (static_cast<int>(workers_.size()) > count) {
      workers_.back().join();
      workers_.pop_back();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_from_.store(1 << 30);
    }
    while (static_cast<int>(workers_.size()) < count) {
      // A new worker starts at the current generation so it never replays a finished job.
      const int index = static_cast<int>(workers_.size());
      workers_.emplace_back([this, index, start = generation_.load()] { worker_loop(index, start); });
    }
  }

  void worker_loop(int index, uint64_t start) {
    uint64_t seen = start;
    auto woken = [&] { return generation_.load(std::memory_order_acquire) != seen || index >= stop_from_.load(); };
    for (;;) {
      if (!spin_until(woken)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, woken);
      }
      if (index >= stop_from_.load()) return;
      seen = generation_.load(std::memory_order_acquire);
      work();
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);  // the caller may be about to sleep on done_
        done_.notify_one();
      }
    }
  }

  std::atomic<int> threads_{default_threads()};
  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunks_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> stop_from_{1 << 30};
};

Pool& pool() {
  static Pool instance;
  return instance;
}

}  // namespace

int num_threads() { return pool().threads(); }

void set_num_threads(int n) { pool().set_threads(n); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  pool().run(n, std::max<int64_t>(1, grain), fn);
}

}  // namespace moeweave
