// bench_moe_experts: the fused routed-expert stage on DeepSeek-V2-Lite's layer shape: 64 experts
// of gate, up [1408, 2048] and down [2048, 1408] at INT4 (symmetric, bf16 scales per 64 columns),
// top-6, x [T, 2048] bf16. Decoding (T = 1, 8, and 32 as in a server's batch: ~3 tokens per
// touched expert), bytes/s counts the weights of the distinct experts a call touches: what a
// decode step must stream from DRAM. A 512-token prompt (~48 tokens per expert) is compute-bound
// and reports FLOP/s too.
//
// A decode step meets each layer's experts cold (every other layer ran in between), so the
// calls cycle over random routings whose slot tables point every expert a call uses at a copy
// no other call of the cycle uses, the copies together spanning 4x the last-level cache.
#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "buffers.h"
#include "harness.h"
#include "moeweave/kernels_cpu.h"

using namespace moeweave;

namespace {

constexpr int64_t kExperts = 64, kHidden = 2048, kInter = 1408, kTopK = 6, kBits = 4;
constexpr int64_t kPrefillTokens = 512;  // ~48 tokens per expert: compute-bound, reported in FLOP/s

struct Call {
  std::vector<int32_t> ids;       // [T, K], distinct experts per token
  std::vector<float> weights;     // [T, K], summing to 1 per token
  std::vector<int32_t> distinct;  // the experts the T tokens use together
  std::vector<ExpertSlot> slots;  // [kExperts]; only `distinct` ones are read
};

struct Inputs {
  bench::WeightSet gate_up, down;  // 2 and 1 matrices per expert copy
  std::vector<Call> calls;
};

Call random_call(int64_t tokens, std::mt19937& rng) {
  Call call;
  std::vector<int32_t> order(kExperts);
  std::iota(order.begin(), order.end(), 0);
  for (int64_t t = 0; t < tokens; ++t) {
    std::shuffle(order.begin(), order.end(), rng);
    call.ids.insert(call.ids.end(), order.begin(), order.begin() + kTopK);
    call.weights.insert(call.weights.end(), kTopK, 1.0f / kTopK);
  }
  call.distinct = call.ids;
  std::sort(call.distinct.begin(), call.distinct.end());
  call.distinct.erase(std::unique(call.distinct.begin(), call.distinct.end()), call.distinct.end());
  return call;
}

Inputs make_inputs(int64_t tokens, int64_t expert_bytes) {
  std::mt19937 rng(5);
  std::vector<Call> calls;
  int64_t copies = 0;
  while (copies < bench::copies_beyond_llc(expert_bytes)) {
    calls.push_back(random_call(tokens, rng));
    copies += int64_t(calls.back().distinct.size());
  }
  Inputs in{bench::weight_set(kInter, kHidden, kBits, 2 * copies),
            bench::weight_set(kHidden, kInter, kBits, copies), std::move(calls)};
  int64_t copy = 0;
  for (Call& call : in.calls) {
    call.slots.assign(kExperts, {in.gate_up.matrices[0], in.gate_up.matrices[1], in.down.matrices[0]});
    for (int32_t e : call.distinct) {
      call.slots[e] = {in.gate_up.matrices[2 * copy], in.gate_up.matrices[2 * copy + 1],
                       in.down.matrices[copy]};
      ++copy;
    }
  }
  return in;
}

void moe_experts_bench(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  const int64_t expert_bytes =
      2 * bench::weight_bytes(kInter, kHidden, kBits) + bench::weight_bytes(kHidden, kInter, kBits);
  static bench::Latest<int64_t, Inputs> inputs;
  const Inputs& in = inputs.get(tokens, [&] { return make_inputs(tokens, expert_bytes); });
  std::vector<uint16_t> x(tokens * kHidden);  // [T, H] bf16
  bench::fill_random_bf16(x.data(), int64_t(x.size()), 1.0f, 4);
  std::vector<float> y(tokens * kHidden);  // [T, H]
  static size_t next = 0;  // kept across the runner's calls, so no call starts on warm experts
  int64_t bad = -1;
  bench::run(state, [&] {
    const Call& call = in.calls[next++ % in.calls.size()];
    if (moe_experts(call.slots.data(), kExperts, DType::bf16, x.data(), tokens, kHidden, call.ids.data(),
                    call.weights.data(), kTopK, y.data(), &bad) != kOk)
      state.SkipWithError("moe_experts failed");
    return int64_t(call.distinct.size()) * expert_bytes;
  });
  if (tokens >= kPrefillTokens) bench::report_flops(state, 2.0 * tokens * kTopK * 3 * kInter * kHidden);
}

}  // namespace

BENCHMARK(moe_experts_bench)
    ->Name("moe_experts/64x1408x2048_int4_top6")
    ->ArgName("T")
    ->Arg(1)
    ->Arg(8)
    ->Arg(32)
    ->Arg(kPrefillTokens)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
