// bench_quant_matmul: y [m, n] fp32 = x [m, k] bf16 . w^T for w [4096, 4096] at bits 2/3/4/8
// (symmetric, bf16 scales per 64 columns) and bf16 (bits 16). Decode (m = 1, 8) cycles over
// copies of w spanning 4x the last-level cache, so every call streams its weight from DRAM:
// bytes/s counts the packed values and scales read, and triad_frac is the question (does the
// kernel stream at memory bandwidth?). Prefill (m = 512) is compute: it reports FLOP/s too.
#include <vector>

#include "buffers.h"
#include "harness.h"
#include "moeweave/kernels_cpu.h"

using namespace moeweave;

namespace {

constexpr int64_t kN = 4096, kK = 4096;
constexpr int64_t kPrefillRows = 512;

void quant_matmul_bench(benchmark::State& state) {
  const int bits = int(state.range(0));
  const int64_t m = state.range(1);
  static bench::Latest<int, bench::WeightSet> weights;
  const bench::WeightSet& w = weights.get(bits, [&] {
    return bench::weight_set(kN, kK, bits, bench::copies_beyond_llc(bench::weight_bytes(kN, kK, bits)));
  });
  std::vector<uint16_t> x(m * kK);  // [m, k] bf16
  bench::fill_random_bf16(x.data(), int64_t(x.size()), 1.0f, 3);
  std::vector<float> y(m * kN);  // [m, n]
  static size_t next = 0;        // kept across the runner's calls, so no call starts on a warm copy
  bench::run(state, [&] {
    const QuantMatrix& matrix = w.matrices[next++ % w.matrices.size()];
    if (quant_matmul(matrix, DType::bf16, x.data(), m, y.data()) != kOk)
      state.SkipWithError("quant_matmul failed");
    return w.bytes_each;
  });
  if (m == kPrefillRows) bench::report_flops(state, 2.0 * double(m) * kN * kK);
}

}  // namespace

BENCHMARK(quant_matmul_bench)
    ->Name("quant_matmul/4096x4096")
    ->ArgNames({"bits", "m"})
    ->ArgsProduct({{2, 3, 4, 8, 16}, {1, 8, kPrefillRows}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
