// The native decode step (decode_step.h): the model's Python forward for one new token per
// sequence, layer after layer, on the existing kernels. Every intermediate is rounded to bf16
// where the Python forward's op returns bf16, so the kernels see the same inputs.
#include "moeweave/decode_step.h"

#include <algorithm>
#include <cmath>

#include "moeweave/half.h"
#include "moeweave/thread_pool.h"

namespace moeweave {
namespace {

template <typename T>
T* sized(std::vector<T>& buffer, int64_t n) {
  if (int64_t(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

inline uint16_t add_bf16(uint16_t a, uint16_t b) { return float_to_bf16(bf16_to_float(a) + bf16_to_float(b)); }

// out [m, n] bf16 = x [m, k] W^T (+ bias), rounded as linear() rounds: the product, then the sum.
Status project(const DecodeProjection& p, const uint16_t* x, int64_t m, std::vector<float>& product, uint16_t* out) {
  const int64_t n = p.matrix.n;
  float* y = sized(product, m * n);
  if (Status s = quant_matmul(p.matrix, DType::bf16, x, m, y)) return s;
  for (int64_t i = 0; i < m * n; ++i) {
    out[i] = float_to_bf16(y[i]);
    if (p.bias) out[i] = add_bf16(out[i], p.bias[i % n]);
  }
  return kOk;
}

// h [n] += delta [n], in bf16.
void add_into(uint16_t* h, const uint16_t* delta, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = add_bf16(h[i], delta[i]);
}

// Softmax over the bf16 logits [E] in fp32, the top k, optionally renormalised; weights rounded
// to bf16 as the router returns them. Equal probabilities are common (bf16 logits take few
// values), so the top k are chosen as torch.topk on the CPU chooses them: (probability, id)
// pairs in id order through std::partial_sort when k * 64 <= E, else std::nth_element and a sort
// of the first k - 1.
void softmax_topk(const uint16_t* logits, int64_t experts, int64_t k, bool normalise,
                  std::vector<std::pair<float, int64_t>>& probs, int32_t* ids, float* weights) {
  float best = -INFINITY;
  for (int64_t e = 0; e < experts; ++e) best = std::max(best, bf16_to_float(logits[e]));
  probs.resize(experts);
  float total = 0.0f;
  for (int64_t e = 0; e < experts; ++e) {
    probs[e] = {std::exp(bf16_to_float(logits[e]) - best), e};
    total += probs[e].first;
  }
  for (auto& p : probs) p.first /= total;
  const auto larger = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return a.first > b.first;
  };
  if (k * 64 <= experts) {
    std::partial_sort(probs.begin(), probs.begin() + k, probs.end(), larger);
  } else {
    std::nth_element(probs.begin(), probs.begin() + k - 1, probs.end(), larger);
    std::sort(probs.begin(), probs.begin() + k - 1, larger);
  }
  float chosen = 0.0f;
  for (int64_t j = 0; j < k; ++j) chosen += probs[j].first;
  for (int64_t j = 0; j < k; ++j) {
    ids[j] = int32_t(probs[j].second);
    weights[j] = bf16_to_float(float_to_bf16(normalise ? probs[j].first / chosen : probs[j].first));
  }
}

}  // namespace

ExpertSlot expert_slot_from_row(const int64_t* row) {
  ExpertSlot slot;
  QuantMatrix* projections[3] = {&slot.gate, &slot.up, &slot.down};
  for (int p = 0; p < 3; ++p) {
    const int64_t* f = row + p * 8;
    *projections[p] = QuantMatrix{reinterpret_cast<const uint8_t*>(f[0]), reinterpret_cast<const void*>(f[1]),
                                  reinterpret_cast<const void*>(f[2]), f[3], f[4], int32_t(f[5]), int32_t(f[6]),
                                  static_cast<DType>(f[7])};
  }
  return slot;
}

DecodeStack::DecodeStack(const DecodeConfig& config, std::vector<DecodeLayer> layers)
    : config_(config), layers_(std::move(layers)) {}

Status DecodeStack::step(const DecodeTokens& tokens, int64_t* bad_index) {
  for (int64_t i = 0; i < tokens.count; ++i)
    if (tokens.lengths[i] < 0 || tokens.lengths[i] >= tokens.capacities[i]) {
      *bad_index = i;
      return -ERANGE;
    }
  for (int64_t l = 0; l < num_layers(); ++l) {
    if (Status s = attention_block(layers_[l], l, tokens)) return s;
    if (Status s = mlp_block(layers_[l], tokens, bad_index)) {
      if (s == -ERANGE) *bad_index = -1 - l;
      return s;
    }
  }
  return kOk;
}

Status DecodeStack::attention_block(const DecodeLayer& layer, int64_t index, const DecodeTokens& tokens) {
  const int64_t n = tokens.count, hidden = config_.hidden, d = config_.head_dim;
  const int64_t q_width = config_.heads * d, kv_width = config_.kv_heads * d;
  const float eps = config_.eps;
  uint16_t* x = sized(x_, n * hidden);
  if (Status s = rms_norm(DType::bf16, tokens.hidden, layer.input_norm, x, n, hidden, eps)) return s;
  uint16_t *q = sized(q_, n * q_width), *k = sized(k_, n * kv_width), *v = sized(v_, n * kv_width);
  for (auto [p, out] : {std::pair{&layer.q, q}, {&layer.k, k}, {&layer.v, v}})
    if (Status s = project(*p, x, n, f32_, out)) return s;
  if (config_.qk_norm == QkNorm::head) {
    if (Status s = rms_norm(DType::bf16, q, layer.q_norm, q, n * config_.heads, d, eps)) return s;
    if (Status s = rms_norm(DType::bf16, k, layer.k_norm, k, n * config_.kv_heads, d, eps)) return s;
  } else if (config_.qk_norm == QkNorm::full) {
    if (Status s = rms_norm(DType::bf16, q, layer.q_norm, q, n, q_width, eps)) return s;
    if (Status s = rms_norm(DType::bf16, k, layer.k_norm, k, n, kv_width, eps)) return s;
  }
  uint16_t* rotated = sized(rotated_, n * (q_width + kv_width));  // [N, nH * D] queries, then [N, nKV * D] keys
  int64_t longest = 0;
  for (int64_t i = 0; i < n; ++i) longest = std::max(longest, tokens.lengths[i] + 1);
  uint8_t* visible = sized(visible_, n * longest);
  uint16_t* attended = sized(attended_, n * q_width);
  std::vector<AttentionArgs> problems(n);
  const float scale = static_cast<float>(std::pow(double(d), -0.5));
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t* cos = tokens.cos + tokens.positions[i] * d;
    const uint16_t* sin = tokens.sin + tokens.positions[i] * d;
    uint16_t* q_rot = rotated + i * q_width;
    uint16_t* k_rot = rotated + n * q_width + i * kv_width;
    if (Status s = rope(DType::bf16, q + i * q_width, cos, sin, q_rot, 1, 1, config_.heads, d)) return s;
    if (Status s = rope(DType::bf16, k + i * kv_width, cos, sin, k_rot, 1, 1, config_.kv_heads, d)) return s;
    const int64_t length = tokens.lengths[i], capacity = tokens.capacities[i];
    const int64_t* buffers = tokens.caches + (i * num_layers() + index) * 2;
    uint16_t* k_cache = reinterpret_cast<uint16_t*>(buffers[0]);
    uint16_t* v_cache = reinterpret_cast<uint16_t*>(buffers[1]);
    for (int64_t h = 0; h < config_.kv_heads; ++h) {
      std::copy_n(k_rot + h * d, d, k_cache + (h * capacity + length) * d);
      std::copy_n(v + i * kv_width + h * d, d, v_cache + (h * capacity + length) * d);
    }
    uint8_t* row = visible + i * longest;
    if (tokens.mask)
      std::copy_n(tokens.mask + i * tokens.mask_stride, length, row);
    else
      std::fill_n(row, length, uint8_t(1));
    row[length] = 1;  // a token always sees itself
    problems[i] = AttentionArgs{DType::bf16, q_rot, k_cache, v_cache, row, attended + i * q_width, 1, config_.heads,
                                config_.kv_heads, 1, length + 1, d, d,
                                {config_.kv_heads * capacity * d, capacity * d, d},
                                {config_.kv_heads * capacity * d, capacity * d, d}, scale};
  }
  if (Status s = attention_batch(problems.data(), n)) return s;
  uint16_t* out = sized(mlp_, n * hidden);
  if (Status s = project(layer.o, attended, n, f32_, out)) return s;
  add_into(tokens.hidden, out, n * hidden);
  return kOk;
}

Status DecodeStack::gated_mlp(const DecodeLayer& layer, int64_t n, uint16_t* out) {
  const int64_t inter = layer.gate.matrix.n;
  uint16_t *gate = sized(gate_, n * inter), *up = sized(up_, n * inter);
  if (Status s = project(layer.gate, x_.data(), n, f32_, gate)) return s;
  if (Status s = project(layer.up, x_.data(), n, f32_, up)) return s;
  if (Status s = silu_mul(DType::bf16, gate, up, gate, n * inter)) return s;
  return project(layer.down, gate, n, f32_, out);
}

Status DecodeStack::mlp_block(const DecodeLayer& layer, const DecodeTokens& tokens, int64_t* bad_index) {
  const int64_t n = tokens.count, hidden = config_.hidden;
  uint16_t* x = sized(x_, n * hidden);
  if (Status s = rms_norm(DType::bf16, tokens.hidden, layer.post_attention_norm, x, n, hidden, config_.eps)) return s;
  uint16_t* out = sized(mlp_, n * hidden);
  if (!layer.router.packed) {
    if (Status s = gated_mlp(layer, n, out)) return s;
    add_into(tokens.hidden, out, n * hidden);
    return kOk;
  }
  const int64_t experts = layer.router.n, k = config_.top_k;
  uint16_t* logits = sized(q_, n * experts);
  if (Status s = project(DecodeProjection{layer.router}, x, n, f32_, logits)) return s;
  int32_t* ids = sized(ids_, n * k);
  float* weights = sized(weights_, n * k);
  for (int64_t i = 0; i < n; ++i)
    softmax_topk(logits + i * experts, experts, k, config_.norm_topk_prob, probs_, ids + i * k, weights + i * k);
  if (layer.remap && tokens.adapters) {
    int32_t* rerouted = sized(rerouted_, n * k);
    if (Status s = reroute(ids, tokens.adapters, layer.remap, rerouted, n, k, layer.adapters, experts, bad_index))
      return s;
    ids = rerouted;
  }
  slots_.resize(layer.num_slots);
  for (int64_t e = 0; e < layer.num_slots; ++e) slots_[e] = expert_slot_from_row(layer.expert_table + e * 3 * 8);
  float* routed = sized(f32_, n * hidden);
  if (Status s = moe_experts(slots_.data(), layer.num_slots, DType::bf16, x, n, hidden, ids, weights, k, routed, bad_index))
    return s;
  for (int64_t i = 0; i < n * hidden; ++i) out[i] = float_to_bf16(routed[i]);
  if (layer.gate.matrix.packed) {
    uint16_t* shared = sized(k_, n * hidden);
    if (Status s = gated_mlp(layer, n, shared)) return s;
    if (layer.shared_gate.packed) {
      uint16_t* gate_logit = sized(v_, n);
      if (Status s = project(DecodeProjection{layer.shared_gate}, x, n, f32_, gate_logit)) return s;
      for (int64_t i = 0; i < n; ++i) {
        const float g = bf16_to_float(layer.sigmoid[gate_logit[i]]);
        for (int64_t c = 0; c < hidden; ++c)
          shared[i * hidden + c] = float_to_bf16(g * bf16_to_float(shared[i * hidden + c]));
      }
    }
    add_into(out, shared, n * hidden);
  }
  add_into(tokens.hidden, out, n * hidden);
  return kOk;
}

}  // namespace moeweave
