// vnni_peak.h; compiled with the AVX-512 VNNI flags, called only where the CPU has them.
#include "vnni_peak.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>

#include "moeweave/isa.h"
#include "moeweave/thread_pool.h"

namespace moeweave::bench {
namespace {

constexpr int kChains = 12;  // vpdpbusd's latency (~5 cycles) times its throughput (up to 2 per cycle), and spare
constexpr int64_t kMacsPerDot = 64;

// Runs `steps` rounds of kChains dot products; returns a value that depends on all of them.
int dots(int64_t steps) {
  __m512i acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_epi32(c);
  __m512i a = _mm512_set1_epi32(0x01020304), b = _mm512_set1_epi32(0x05060708);
  for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbusd_epi32(acc[c], a, b);
    __asm__ volatile("" : "+v"(a));  // keeps the operands from being treated as loop constants
  }
  __m512i total = acc[0];
  for (int c = 1; c < kChains; ++c) total = _mm512_add_epi32(total, acc[c]);
  alignas(64) int lanes[16];
  _mm512_store_si512(lanes, total);
  return lanes[0];
}

}  // namespace

double vnni_peak_macs_per_second() {
  if (!isa_supported(Isa::avx512)) return 0.0;
  // Chunks of ~10 ms, 4 per thread (the pool's most), claimed as threads come free, so a worker
  // that wakes late does not halve the rate.
  constexpr int64_t kSteps = 1 << 20;
  const int64_t chunks = 4 * num_threads();
  double best = 0.0;
  for (int rep = 0; rep < 5; ++rep) {
    std::atomic<int> sink{0};
    const auto start = std::chrono::steady_clock::now();
    parallel_for(chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) sink += dots(kSteps);
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, double(chunks) * kSteps * kChains * kMacsPerDot / seconds);
  }
  return best;
}

}  // namespace moeweave::bench
