// bench_quant_matmul: y [m, n] fp32 = x [m, k] bf16 . w^T for w [4096, 4096] at bits 2/3/4/8
// (symmetric, bf16 scales per 64 columns) and bf16 (bits 16). Every call streams its weight from
// DRAM (the runner cycles over copies of w spanning 4x the last-level cache): bytes/s counts the
// packed values and scales read, and triad_frac asks whether the kernel streams at memory
// bandwidth. That is the question at m = 1 and 8 (decode) and at 4 (an expert's few tokens in a
// server's batch). From m = 32 (a server's decode batch) to 512 (prefill) the integer dot
// products bound the packed kernels instead: those rows report FLOP/s and vnni_frac, the
// multiply-adds per second over the vpdpbusd peak this binary measures at start (vnni_peak.h).
#include <vector>

#include "buffers.h"
#include "harness.h"
#include "moeweave/kernels_cpu.h"
#include "vnni_peak.h"

using namespace moeweave;

namespace {

constexpr int64_t kN = 4096, kK = 4096;
constexpr int64_t kPrefillRows = 512, kComputeBoundRows = 32;

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
  const double seconds = bench::run(state, [&] {
    const QuantMatrix& matrix = w.matrices[next++ % w.matrices.size()];
    if (quant_matmul(matrix, DType::bf16, x.data(), m, y.data()) != kOk)
      state.SkipWithError("quant_matmul failed");
    return w.bytes_each;
  });
  if (m < kComputeBoundRows) return;
  const double macs = double(m) * kN * kK;
  bench::report_flops(state, 2.0 * macs);
  static const double vnni_peak = bench::vnni_peak_macs_per_second();
  if (bits != 16 && vnni_peak > 0 && seconds > 0)
    state.counters["vnni_frac"] = macs * double(state.iterations()) / seconds / vnni_peak;
}

}  // namespace

BENCHMARK(quant_matmul_bench)
    ->Name("quant_matmul/4096x4096")
    ->ArgNames({"bits", "m"})
    ->ArgsProduct({{2, 3, 4, 8, 16}, {1, 4, 8, kComputeBoundRows, kPrefillRows}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
