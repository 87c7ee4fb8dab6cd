// bench_norm_rope: RMSNorm of x [rows, 4096] and RoPE of x [1, S, 32, 128] with cos, sin
// [S, 128], all bf16. Decode (1 row or position) times the fixed cost of a call on inputs
// already in cache, as a decode step finds them; prefill (512) cycles over copies of its inputs
// and outputs spanning 4x the last-level cache, so bytes/s (inputs read + output written)
// against the triad says whether these elementwise kernels stream at memory bandwidth.
#include <vector>

#include "buffers.h"
#include "harness.h"
#include "moeweave/kernels_cpu.h"

using namespace moeweave;

namespace {

constexpr int64_t kHidden = 4096, kHeads = 32, kDim = 128;

// Slabs of `bytes` random bf16 each, one call's inputs and output: one slab to stay in cache,
// or enough to span 4x the last-level cache.
bench::Slabs random_slabs(int64_t bytes, bool cycled) {
  bench::Slabs s = bench::make_slabs(bytes, cycled ? bench::copies_beyond_llc(bytes) : 1);
  bench::fill_random_bf16(reinterpret_cast<uint16_t*>(s.slab(0)), bytes / 2, 1.0f, 8);
  bench::replicate(s);
  return s;
}

void rms_norm_bench(benchmark::State& state) {
  const int64_t rows = state.range(0);
  const int64_t x_bytes = rows * kHidden * 2;  // x and out [rows, hidden]
  static bench::Latest<int64_t, bench::Slabs> slabs;
  const bench::Slabs& s = slabs.get(rows, [&] { return random_slabs(2 * x_bytes, rows > 1); });
  std::vector<uint16_t> weight(kHidden);  // [hidden]
  bench::fill_random_bf16(weight.data(), kHidden, 1.0f, 9);
  static int64_t next = 0;  // kept across the runner's calls, so no call starts on warm copies
  bench::run(state, [&] {
    uint8_t* x = s.slab(next++);
    if (rms_norm(DType::bf16, x, weight.data(), x + x_bytes, rows, kHidden, 1e-6f) != kOk)
      state.SkipWithError("rms_norm failed");
    return 2 * x_bytes + kHidden * 2;
  });
}

void rope_bench(benchmark::State& state) {
  const int64_t seq = state.range(0);
  const int64_t x_bytes = seq * kHeads * kDim * 2, table_bytes = seq * kDim * 2;  // x, out; cos, sin
  static bench::Latest<int64_t, bench::Slabs> slabs;
  const int64_t bytes = 2 * x_bytes + 2 * table_bytes;
  const bench::Slabs& s = slabs.get(seq, [&] { return random_slabs(bytes, seq > 1); });
  static int64_t next = 0;
  bench::run(state, [&] {
    uint8_t* x = s.slab(next++);
    uint8_t* cos = x + 2 * x_bytes;
    if (rope(DType::bf16, x, cos, cos + table_bytes, x + x_bytes, 1, seq, kHeads, kDim) != kOk)
      state.SkipWithError("rope failed");
    return bytes;
  });
}

}  // namespace

BENCHMARK(rms_norm_bench)->Name("rms_norm/bf16_h4096")->ArgName("rows")->Arg(1)->Arg(512)->UseRealTime();
BENCHMARK(rope_bench)->Name("rope/bf16_heads32_d128")->ArgName("S")->Arg(1)->Arg(512)->UseRealTime();
