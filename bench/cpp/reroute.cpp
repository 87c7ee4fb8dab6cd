// bench_reroute: ExpertWeave's token rerouting on DeepSeek-V2-Lite's routing (64 experts, top-6)
// over 16 adapters: out [T, 6] = remap [17, 64] at (adapter of each token + 1, its expert ids).
// Decode (T = 1) times the fixed cost of a call on inputs in cache; a batch (T = 4096) cycles
// over copies of ids, adapters and out spanning 4x the last-level cache, so bytes/s (ids and
// adapters read, out written) against the triad says whether the lookup streams.
#include <cstring>
#include <random>
#include <vector>

#include "buffers.h"
#include "harness.h"
#include "moeweave/kernels_cpu.h"

using namespace moeweave;

namespace {

constexpr int64_t kExperts = 64, kTopK = 6, kAdapters = 16;

int64_t slab_bytes(int64_t tokens) { return tokens * (2 * kTopK + 1) * 4; }

// Slabs of one call's ids [T, K], adapters [T] and out [T, K], int32: one slab to stay in cache
// (decode), or enough to span 4x the last-level cache.
bench::Slabs make_inputs(int64_t tokens) {
  const int64_t bytes = slab_bytes(tokens);
  bench::Slabs s = bench::make_slabs(bytes, tokens > 1 ? bench::copies_beyond_llc(bytes) : 1);
  int32_t* ids = reinterpret_cast<int32_t*>(s.slab(0));
  std::mt19937 rng(10);
  for (int64_t i = 0; i < tokens * kTopK; ++i) ids[i] = int32_t(rng() % kExperts);
  for (int64_t t = 0; t < tokens; ++t)
    ids[tokens * kTopK + t] = int32_t(rng() % (kAdapters + 1)) - 1;  // -1: base
  std::memset(ids + tokens * (kTopK + 1), 0, tokens * kTopK * 4);
  bench::replicate(s);
  return s;
}

void reroute_bench(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  static bench::Latest<int64_t, bench::Slabs> inputs;
  const bench::Slabs& s = inputs.get(tokens, [&] { return make_inputs(tokens); });
  std::vector<int32_t> remap((kAdapters + 1) * kExperts);  // [A + 1, E]
  std::mt19937 rng(11);
  for (int32_t& r : remap) r = int32_t(rng() % kExperts);
  static int64_t next = 0;  // kept across the runner's calls, so no call starts on warm copies
  int64_t bad = -1;
  bench::run(state, [&] {
    int32_t* ids = reinterpret_cast<int32_t*>(s.slab(next++));
    if (reroute(ids, ids + tokens * kTopK, remap.data(), ids + tokens * (kTopK + 1), tokens, kTopK, kAdapters,
                kExperts, &bad) != kOk)
      state.SkipWithError("reroute failed");
    return slab_bytes(tokens);
  });
}

}  // namespace

BENCHMARK(reroute_bench)->Name("reroute/E64_top6_A16")->ArgName("T")->Arg(1)->Arg(4096)->UseRealTime();
