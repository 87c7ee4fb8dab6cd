// bench_attention: one decode step's attention, bf16: 1 query of 32 heads over T = 4096 cached
// keys and values of 8 heads (GQA, 4 query heads per key/value head), d = 128. The step reads
// the whole cache (k and v [1, 8, 4096, 128], 16 MiB), so bytes/s counts it (q and out are
// 16 KiB); calls cycle over copies of the cache spanning 4x the last-level cache, as a model's
// layers each have their own.
#include <cmath>
#include <vector>

#include "buffers.h"
#include "harness.h"
#include "moeweave/kernels_cpu.h"

using namespace moeweave;

namespace {

constexpr int64_t kHeads = 32, kKvHeads = 8, kKeys = 4096, kDim = 128;
constexpr int64_t kCacheBytes = 2 * kKvHeads * kKeys * kDim * 2;  // k and v, bf16

// Slabs of [2 (k, v), kv_heads, T, d] bf16.
bench::Slabs make_caches() {
  bench::Slabs caches = bench::make_slabs(kCacheBytes, bench::copies_beyond_llc(kCacheBytes));
  bench::fill_random_bf16(reinterpret_cast<uint16_t*>(caches.slab(0)), kCacheBytes / 2, 1.0f, 6);
  bench::replicate(caches);
  return caches;
}

void attention_bench(benchmark::State& state) {
  static bench::Latest<int, bench::Slabs> caches;
  const bench::Slabs& c = caches.get(0, make_caches);
  std::vector<uint16_t> q(kHeads * kDim), out(kHeads * kDim);  // [1, heads, 1, d] bf16
  bench::fill_random_bf16(q.data(), int64_t(q.size()), 1.0f, 7);
  const std::vector<uint8_t> mask(kKeys, 1);  // [1, 1, T]
  // k and v are set per call; both [1, kv_heads, T, d] with strides in elements.
  AttentionArgs args{DType::bf16, q.data(), nullptr, nullptr, mask.data(), out.data(),
                     1, kHeads, kKvHeads, 1, kKeys, kDim, kDim,
                     {kKvHeads * kKeys * kDim, kKeys * kDim, kDim},
                     {kKvHeads * kKeys * kDim, kKeys * kDim, kDim},
                     1.0f / std::sqrt(float(kDim))};
  static int64_t next = 0;  // kept across the runner's calls, so no call starts on a warm cache
  bench::run(state, [&] {
    const uint8_t* cache = c.slab(next++);
    args.k = cache;
    args.v = cache + kCacheBytes / 2;
    if (attention(args) != kOk) state.SkipWithError("attention failed");
    return kCacheBytes + 2 * kHeads * kDim * 2;
  });
}

}  // namespace

BENCHMARK(attention_bench)
    ->Name("attention/decode_bf16_q32_kv8_T4096_d128")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
