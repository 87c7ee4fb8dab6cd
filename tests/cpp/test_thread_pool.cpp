// The pool visits every index exactly once, for any thread count, and nested calls run inline.
#include <atomic>
#include <vector>

#include "check.h"
#include "moeweave/thread_pool.h"

using namespace moeweave;

TEST(thread_pool_covers_range) {
  for (int threads : {1, 2, 3, 8}) {
    set_num_threads(threads);
    for (int64_t n : {0, 1, 7, 1000, 100003}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      parallel_for(n, 16, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[i]++;
      });
      for (auto& h : hits) CHECK(h.load() == 1);
    }
  }
  set_num_threads(2);
}

TEST(thread_pool_nested) {
  set_num_threads(4);
  std::atomic<int64_t> total{0};
  parallel_for(64, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      parallel_for(100, 1, [&](int64_t ib, int64_t ie) { total += ie - ib; });
  });
  CHECK(total.load() == 6400);
  set_num_threads(2);
}
