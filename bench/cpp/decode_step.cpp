// bench_decode_step: the native decode step (decode_step.h) over Qwen3-30B-A3B's layer shape:
// hidden 2048, 32 query / 4 key-value heads of 128 with per-head QK-norm, INT8 projections,
// a bf16 router over 128 experts of 768 at INT4, top-8; T = 1 and 8 tokens, each at position
// 256 of its own cache. bytes/s counts what a step must stream: every layer's dense weights and
// top-k x T of its experts (at most 128; an upper bound for T > 1, whose tokens may share
// experts). One call runs a stack of layers that together span 4x the last-level cache, so every
// layer meets its weights cold, as in a real model.
#include <algorithm>
#include <vector>

#include "buffers.h"
#include "harness.h"
#include "moeweave/decode_step.h"

using namespace moeweave;

namespace {

constexpr int64_t kHidden = 2048, kHeads = 32, kKvHeads = 4, kDim = 128, kExperts = 128, kInter = 768, kTopK = 8;
constexpr int64_t kCapacity = 512, kLength = 256;

int64_t dense_bytes() {
  return bench::weight_bytes(kHeads * kDim, kHidden, 8) + 2 * bench::weight_bytes(kKvHeads * kDim, kHidden, 8) +
         bench::weight_bytes(kHidden, kHeads * kDim, 8) + bench::weight_bytes(kExperts, kHidden, 16);
}

int64_t expert_bytes() { return 2 * bench::weight_bytes(kInter, kHidden, 4) + bench::weight_bytes(kHidden, kInter, 4); }

std::vector<int64_t> table_row(const QuantMatrix& w) {
  return {int64_t(w.packed), int64_t(w.scales), int64_t(w.zeros), w.n, w.k, w.bits, w.group_size,
          int64_t(w.scale_dtype)};
}

struct Inputs {
  int64_t layers;
  bench::WeightSet q, kv, o, router, gate_up, down;
  std::vector<std::vector<int64_t>> tables;  // per layer [E, 3, 8]
  std::vector<uint16_t> norms;               // [H] ones-ish, shared by every norm
  std::vector<std::vector<uint16_t>> caches;  // per (token, layer): k then v [nKV, capacity, D]
  std::unique_ptr<DecodeStack> stack;
};

std::unique_ptr<Inputs> make_inputs(int64_t tokens) {
  auto in = std::make_unique<Inputs>();
  const int64_t per_layer = dense_bytes() + kExperts * expert_bytes();
  in->layers = std::max<int64_t>(2, bench::copies_beyond_llc(per_layer));
  const int64_t layers = in->layers;
  in->q = bench::weight_set(kHeads * kDim, kHidden, 8, layers);
  in->kv = bench::weight_set(kKvHeads * kDim, kHidden, 8, 2 * layers);
  in->o = bench::weight_set(kHidden, kHeads * kDim, 8, layers);
  in->router = bench::weight_set(kExperts, kHidden, 16, layers);
  in->gate_up = bench::weight_set(kInter, kHidden, 4, 2 * kExperts * layers);
  in->down = bench::weight_set(kHidden, kInter, 4, kExperts * layers);
  in->norms.resize(std::max(kHidden, kDim));
  bench::fill_random_bf16(in->norms.data(), int64_t(in->norms.size()), 1.0f, 11);
  std::vector<DecodeLayer> stack_layers;
  for (int64_t l = 0; l < layers; ++l) {
    std::vector<int64_t>& table = in->tables.emplace_back();
    for (int64_t e = 0; e < kExperts; ++e) {
      const int64_t x = l * kExperts + e;
      for (const QuantMatrix* w : {&in->gate_up.matrices[2 * x], &in->gate_up.matrices[2 * x + 1], &in->down.matrices[x]}) {
        const std::vector<int64_t> row = table_row(*w);
        table.insert(table.end(), row.begin(), row.end());
      }
    }
    DecodeLayer layer;
    layer.input_norm = layer.post_attention_norm = in->norms.data();
    layer.q.matrix = in->q.matrices[l];
    layer.k.matrix = in->kv.matrices[2 * l];
    layer.v.matrix = in->kv.matrices[2 * l + 1];
    layer.o.matrix = in->o.matrices[l];
    layer.q_norm = layer.k_norm = in->norms.data();
    layer.router = in->router.matrices[l];
    layer.expert_table = table.data();
    layer.num_slots = kExperts;
    stack_layers.push_back(layer);
  }
  for (int64_t c = 0; c < 2 * tokens * layers; ++c) {
    in->caches.emplace_back(kKvHeads * kCapacity * kDim);
    bench::fill_random_bf16(in->caches.back().data(), int64_t(in->caches.back().size()), 1.0f, 12 + c);
  }
  const DecodeConfig config{kHidden, kHeads, kKvHeads, kDim, kTopK, true, QkNorm::head, 1e-6f};
  in->stack = std::make_unique<DecodeStack>(config, std::move(stack_layers));
  return in;
}

void decode_step_bench(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  static int64_t built_for = -1;
  static std::unique_ptr<Inputs> in;
  if (built_for != tokens) {
    in.reset();
    in = make_inputs(tokens);
    built_for = tokens;
  }
  const int64_t layers = in->layers;
  std::vector<uint16_t> start(tokens * kHidden), hidden(tokens * kHidden);  // [T, H] bf16
  bench::fill_random_bf16(start.data(), int64_t(start.size()), 1.0f, 13);
  std::vector<int64_t> positions(tokens, kLength), lengths(tokens, kLength), capacities(tokens, kCapacity);
  std::vector<int64_t> caches;  // [T, L, 2]
  for (const std::vector<uint16_t>& cache : in->caches) caches.push_back(int64_t(cache.data()));
  std::vector<uint16_t> cos(kCapacity * kDim), sin(kCapacity * kDim);  // [P, D]
  bench::fill_random_bf16(cos.data(), int64_t(cos.size()), 1.0f, 14);
  bench::fill_random_bf16(sin.data(), int64_t(sin.size()), 1.0f, 15);
  const int64_t experts_read = std::min(kExperts, kTopK * tokens);
  int64_t bad = 0;
  bench::run(state, [&] {
    hidden = start;  // the residual stream would otherwise grow step after step
    const DecodeTokens step{tokens, hidden.data(), positions.data(), cos.data(), sin.data(), caches.data(),
                            lengths.data(), capacities.data()};
    if (in->stack->step(step, &bad) != kOk) state.SkipWithError("decode step failed");
    return layers * (dense_bytes() + experts_read * expert_bytes());
  });
  state.counters["layers"] = double(layers);
}

}  // namespace

BENCHMARK(decode_step_bench)
    ->Name("decode_step/qwen3_30b_a3b_layer_int8_int4")
    ->ArgName("T")
    ->Arg(1)
    ->Arg(8)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
