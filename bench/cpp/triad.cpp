// STREAM triad and the cache size it is sized from (triad.h).
#include "triad.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <string>

#include "moeweave/thread_pool.h"

namespace moeweave::bench {
namespace {

// sysfs writes cache sizes as "32768K" or "105M".
int64_t parse_size(const std::string& text) {
  size_t digits = 0;
  const int64_t value = std::stoll(text, &digits);
  switch (digits < text.size() ? text[digits] : ' ') {
    case 'K': return value << 10;
    case 'M': return value << 20;
    case 'G': return value << 30;
    default: return value;
  }
}

}  // namespace

int64_t last_level_cache_bytes() {
  int64_t largest = 0;
  for (int index = 0;; ++index) {
    std::ifstream file("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
    std::string text;
    if (!(file >> text)) break;
    largest = std::max(largest, parse_size(text));
  }
  if (largest == 0) largest = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return largest > 0 ? largest : int64_t(32) << 20;
}

double triad_bytes_per_second() {
  const int64_t n = last_level_cache_bytes();  // floats per array: 4 bytes each, 4x the cache
  std::unique_ptr<float[]> a(new float[n]), b(new float[n]), c(new float[n]);
  // The pool cuts [0, n) into 4 chunks per thread, claimed as threads come free, so one
  // late-waking worker does not leave the other core alone with half the arrays.
  const int64_t grain = 1 << 16;
  parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    std::fill(a.get() + begin, a.get() + end, 0.0f);
    std::fill(b.get() + begin, b.get() + end, 1.0f);
    std::fill(c.get() + begin, c.get() + end, 2.0f);
  });
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    parallel_for(n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) a[i] = b[i] + 3.0f * c[i];
    });
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return 3.0 * 4.0 * double(n) / best;
}

}  // namespace moeweave::bench
