// bench_attention: one decode step's attention, bf16: 1 query of 32 heads over T = 4096 cached
// keys and values of 8 or 4 heads (GQA: 4 query heads per key/value head, or 8 as in
// Qwen3-30B-A3B), d = 128. The step reads the whole cache (k and v [1, kv, 4096, 128]: 16 or
// 8 MiB), so bytes/s counts it (q and out are 16 KiB); calls cycle over copies of the cache
// spanning 4x the last-level cache, as a model's layers each have their own.
#include <cmath>
#include <vector>

#include "buffers.h"
#include "harness.h"
#include "moeweave/kernels_cpu.h"

using namespace moeweave;

namespace {

constexpr int64_t kHeads = 32, kKeys = 4096, kDim = 128;

int64_t cache_bytes(int64_t kv_heads) { return 2 * kv_heads * kKeys * kDim * 2; }  // k and v, bf16

// Slabs of [2 (k, v), kv_heads, T, d] bf16.
bench::Slabs make_caches(int64_t kv_heads) {
  const int64_t bytes = cache_bytes(kv_heads);
  bench::Slabs caches = bench::make_slabs(bytes, bench::copies_beyond_llc(bytes));
  bench::fill_random_bf16(reinterpret_cast<uint16_t*>(caches.slab(0)), bytes / 2, 1.0f, 6);
  bench::replicate(caches);
  return caches;
}

void attention_bench(benchmark::State& state) {
  const int64_t kv_heads = state.range(0), bytes = cache_bytes(kv_heads);
  static bench::Latest<int64_t, bench::Slabs> caches;
  const bench::Slabs& c = caches.get(kv_heads, [&] { return make_caches(kv_heads); });
  std::vector<uint16_t> q(kHeads * kDim), out(kHeads * kDim);  // [1, heads, 1, d] bf16
  bench::fill_random_bf16(q.data(), int64_t(q.size()), 1.0f, 7);
  const std::vector<uint8_t> mask(kKeys, 1);  // [1, 1, T]
  // k and v are set per call; both [1, kv_heads, T, d] with strides in elements.
  AttentionArgs args{DType::bf16, q.data(), nullptr, nullptr, mask.data(), out.data(),
                     1, kHeads, kv_heads, 1, kKeys, kDim, kDim,
                     {kv_heads * kKeys * kDim, kKeys * kDim, kDim},
                     {kv_heads * kKeys * kDim, kKeys * kDim, kDim},
                     1.0f / std::sqrt(float(kDim))};
  static int64_t next = 0;  // kept across the runner's calls, so no call starts on a warm cache
  bench::run(state, [&] {
    const uint8_t* cache = c.slab(next++);
    args.k = cache;
    args.v = cache + bytes / 2;
    if (attention(args) != kOk) state.SkipWithError("attention failed");
    return bytes + 2 * kHeads * kDim * 2;
  });
}

}  // namespace

BENCHMARK(attention_bench)
    ->Name("attention/decode_bf16_q32_T4096_d128")
    ->ArgName("kv")
    ->Arg(8)
    ->Arg(4)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
