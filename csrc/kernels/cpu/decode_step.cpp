// The native decode step (decode_step.h): the model's Python forward for one new token per
// sequence, layer after layer, on the existing kernels. Every intermediate is rounded to bf16
// where the Python forward's op returns bf16, so the kernels see the same inputs.
#include "moeweave/decode_step.h"

#include <algorithm>
#include <cmath>

#include "matmul_common.h"
#include "moeweave/half.h"
#include "moeweave/thread_pool.h"

namespace moeweave {
namespace {

template <typename T>
T* sized(std::vector<T>& buffer, int64_t n) {
  if (int64_t(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

// Which of its cached rows token i may see, written to row (lengths[i] + 1 entries).
const uint8_t* visible_row(const DecodeTokens& tokens, int64_t i, uint8_t* row) {
  const int64_t length = tokens.lengths[i];
  if (tokens.mask)
    std::copy_n(tokens.mask + i * tokens.mask_stride, length, row);
  else
    std::fill_n(row, length, uint8_t(1));
  row[length] = 1;  // a token always sees itself
  return row;
}

inline float round_to_bf16(float v) { return bf16_to_float(float_to_bf16(v)); }

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

// Softmax over the logits [E] in fp32, the top k, optionally renormalised, times `scale`;
// weights rounded to bf16 where the router returns bf16 (softmax top-k; DeepSeek-V2's stay fp32).
// Equal probabilities are common (bf16 logits take few values), so the top k are chosen as
// torch.topk on the CPU chooses them: (probability, id) pairs in id order through
// std::partial_sort when k * 64 <= E, else std::nth_element and a sort of the first k - 1.
void softmax_topk(const float* logits, int64_t experts, int64_t k, bool normalise, float scale, bool round_bf16,
                  std::vector<std::pair<float, int64_t>>& probs, int32_t* ids, float* weights) {
  float best = -INFINITY;
  for (int64_t e = 0; e < experts; ++e) best = std::max(best, logits[e]);
  probs.resize(experts);
  float total = 0.0f;
  for (int64_t e = 0; e < experts; ++e) {
    probs[e] = {std::exp(logits[e] - best), e};
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
    const float weight = (normalise ? probs[j].first / chosen : probs[j].first) * scale;
    weights[j] = round_bf16 ? round_to_bf16(weight) : weight;
  }
}

// MLA's RoPE on interleaved pairs (x0, x1), (x2, x3), ... of x [R] into out [R], with the first
// R / 2 columns of the tables; every product, difference and sum rounded to bf16 as torch's bf16
// ops round them (models/mla.py: rope_pairs).
void rope_pairs(const uint16_t* x, const uint16_t* cos, const uint16_t* sin, int64_t r, uint16_t* out) {
  for (int64_t j = 0; j < r / 2; ++j) {
    const float c = bf16_to_float(cos[j]), s = bf16_to_float(sin[j]);
    const float even = bf16_to_float(x[2 * j]), odd = bf16_to_float(x[2 * j + 1]);
    out[2 * j] = float_to_bf16(round_to_bf16(even * c) - round_to_bf16(odd * s));
    out[2 * j + 1] = float_to_bf16(round_to_bf16(odd * c) + round_to_bf16(even * s));
  }
}

// Per head h: out[i, h] (bf16 at out + i * heads * head_stride + h * head_stride) = in[i, h]
// [rows] . W_h [rows, cols] for the bf16 matrices W_h = w + h * rows * cols, as torch.matmul of
// bf16 tensors computes it (fp32 sums, one rounding); in [n, heads, rows] fp32. Threads split the
// heads.
void per_head_products(const uint16_t* w, const float* in, int64_t n, int64_t heads, int64_t rows, int64_t cols,
                       std::vector<float>& scratch, uint16_t* out, int64_t head_stride) {
  float* product = sized(scratch, n * heads * cols);  // [n, heads, cols]
  const cpu::QuantMatmulKernels& kernels = cpu::quant_matmul_kernels();
  const int64_t units = quant_padded(cols, kQuantUnitCols) / kQuantUnitCols;
  parallel_for(heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) {
      const QuantMatrix matrix{reinterpret_cast<const uint8_t*>(w + h * rows * cols), nullptr, nullptr, rows, cols,
                               16, 0, DType::bf16};
      kernels.transposed(matrix, in + h * rows, n, heads * rows, 0, units, product + h * cols, heads * cols, false);
    }
  });
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t c = 0; c < cols; ++c)
        out[(i * heads + h) * head_stride + c] = float_to_bf16(product[(i * heads + h) * cols + c]);
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
    const bool mla = config_.attention == AttentionKind::mla;
    if (Status s = mla ? mla_block(layers_[l], l, tokens) : attention_block(layers_[l], l, tokens)) return s;
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
    const uint8_t* row = visible_row(tokens, i, visible + i * longest);
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

Status DecodeStack::mla_block(const DecodeLayer& layer, int64_t index, const DecodeTokens& tokens) {
  const MlaConfig& m = config_.mla;
  const int64_t n = tokens.count, hidden = config_.hidden, heads = config_.heads;
  const int64_t latent = m.kv_lora_rank, r = m.rope, nope = m.nope, dv = m.v_head_dim;
  const int64_t row = latent + r, q_head = nope + r, q_width = heads * q_head;
  uint16_t* x = sized(x_, n * hidden);
  if (Status s = rms_norm(DType::bf16, tokens.hidden, layer.input_norm, x, n, hidden, config_.eps)) return s;
  uint16_t* q = sized(q_, n * q_width);  // [N, nH, nope + R]
  if (layer.q_a.matrix.packed) {
    uint16_t* low = sized(up_, n * m.q_lora_rank);
    if (Status s = project(layer.q_a, x, n, f32_, low)) return s;
    if (Status s = rms_norm(DType::bf16, low, layer.q_a_norm, low, n, m.q_lora_rank, m.latent_eps)) return s;
    if (Status s = project(layer.q_b, low, n, f32_, q)) return s;
  } else if (Status s = project(layer.q, x, n, f32_, q)) {
    return s;
  }
  uint16_t* kv = sized(k_, n * row);  // [N, C + R]: the latent (normalised below) and the rotary key
  if (Status s = project(layer.kv_a, x, n, f32_, kv)) return s;
  for (int64_t i = 0; i < n; ++i)
    if (Status s = rms_norm(DType::bf16, kv + i * row, layer.kv_norm, kv + i * row, 1, latent, m.latent_eps)) return s;
  // The absorbed queries [N, nH, C + R]: q_pass W_UK, then the rotated q_rot.
  uint16_t* absorbed = sized(rotated_, n * heads * row);
  float* q_pass = sized(absorb_in_, n * heads * nope);  // [N, nH, nope] fp32
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t c = 0; c < nope; ++c) q_pass[(i * heads + h) * nope + c] = bf16_to_float(q[i * q_width + h * q_head + c]);
  per_head_products(layer.w_uk, q_pass, n, heads, nope, latent, absorb_out_, absorbed, row);
  int64_t longest = 0;
  for (int64_t i = 0; i < n; ++i) longest = std::max(longest, tokens.lengths[i] + 1);
  uint8_t* visible = sized(visible_, n * longest);
  uint16_t* attended = sized(attended_, n * heads * latent);  // [N, nH, C]
  std::vector<AttentionArgs> problems(n);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t* cos = tokens.cos + tokens.positions[i] * r;
    const uint16_t* sin = tokens.sin + tokens.positions[i] * r;
    const int64_t length = tokens.lengths[i], capacity = tokens.capacities[i];
    uint16_t* cache = reinterpret_cast<uint16_t*>(tokens.caches[(i * num_layers() + index) * 2]);
    uint16_t* cached = cache + length * row;
    std::copy_n(kv + i * row, latent, cached);
    for (int64_t h = 0; h < heads; ++h)
      rope_pairs(q + i * q_width + h * q_head + nope, cos, sin, r, absorbed + (i * heads + h) * row + latent);
    rope_pairs(kv + i * row + latent, cos, sin, r, cached + latent);
    // One key head of rows [latent | rotary key]; the values are the latents, the same rows' first C.
    problems[i] = AttentionArgs{DType::bf16, absorbed + i * heads * row, cache, cache,
                                visible_row(tokens, i, visible + i * longest), attended + i * heads * latent, 1,
                                heads, 1, 1, length + 1, row, latent, {capacity * row, capacity * row, row},
                                {capacity * row, capacity * row, row}, m.scale};
  }
  if (Status s = attention_batch(problems.data(), n)) return s;
  float* latents = sized(absorb_in_, n * heads * latent);  // [N, nH, C] fp32
  for (int64_t i = 0; i < n * heads * latent; ++i) latents[i] = bf16_to_float(attended[i]);
  uint16_t* values = sized(v_, n * heads * dv);  // [N, nH * Dv]
  per_head_products(layer.w_uv, latents, n, heads, latent, dv, absorb_out_, values, dv);
  uint16_t* out = sized(mlp_, n * hidden);
  if (Status s = project(layer.o, values, n, f32_, out)) return s;
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

// ids, weights [N, K] of the router: softmax top-k over bf16 logits (the product rounded as
// linear() rounds it), or DeepSeek-V2's over fp32 logits of the bf16 weights (it routes in fp32).
Status DecodeStack::route(const DecodeLayer& layer, const uint16_t* x, int64_t n, int32_t* ids, float* weights) {
  const int64_t experts = layer.router.n, k = config_.top_k;
  float* logits = sized(logits_, n * experts);
  const bool deepseek = config_.router == RouterKind::deepseek_v2;
  if (deepseek) {
    if (Status s = quant_matmul(layer.router, DType::bf16, x, n, logits)) return s;
  } else {
    uint16_t* rounded = sized(q_, n * experts);
    if (Status s = project(DecodeProjection{layer.router}, x, n, f32_, rounded)) return s;
    for (int64_t i = 0; i < n * experts; ++i) logits[i] = bf16_to_float(rounded[i]);
  }
  for (int64_t i = 0; i < n; ++i)
    softmax_topk(logits + i * experts, experts, k, !deepseek && config_.norm_topk_prob,
                 deepseek ? config_.routed_scaling_factor : 1.0f, !deepseek, probs_, ids + i * k, weights + i * k);
  return kOk;
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
  int32_t* ids = sized(ids_, n * k);
  float* weights = sized(weights_, n * k);
  if (Status s = route(layer, x, n, ids, weights)) return s;
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
