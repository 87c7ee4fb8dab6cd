// The native decode step: every decoder layer of a bf16 model with grouped-query attention or
// DeepSeek's multi-head latent attention (MLA), for a batch of decode tokens (one new token per
// sequence, each sequence at its own position and with its own KV cache), in one call with no
// Python and no torch op between the kernels:
//   per layer  x = RMSNorm(h); q, k, v = projections (+ bias, QK-norm); RoPE; cache append;
//              attention over the sequence's cache; h += o(attention)
//              (MLA: q (through a low-rank q_a, q_b or not), latent and rotary key = kv_a(x);
//              RMSNorm of the latent; RoPE on interleaved pairs; cache append of [latent | rotary key]; the query's
//              W_UK absorbed; attention over the cached latents; W_UV; h += o(...))
//              x = RMSNorm(h); h += MoE(x) (router softmax top-k, or DeepSeek-V2's fp32 softmax
//              greedy top-k scaled; optional adapter reroute, the fused expert stage, optional
//              shared expert) or the dense gated MLP
// Each step rounds where the model's Python forward rounds (every op's output in bf16, fp32
// inside the ops), and calls the same kernels, so the two agree bit for bit where the ops are the
// same (the router's softmax uses libm's exp here, torch's vectorised one there; the shared
// expert's gate reads torch's own sigmoid from a table of all 65536 bf16 values).
//
// Dimension legend: N tokens of the step, L layers, H hidden, nH / nKV heads, D head dim,
// E routed experts, K experts per token, A adapters.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "moeweave/kernels_cpu.h"
#include "moeweave/quant_formats.h"
#include "moeweave/status.h"

namespace moeweave {

// A weight with its optional bias; matrix.packed == nullptr means "absent".
struct DecodeProjection {
  QuantMatrix matrix{};
  const uint16_t* bias = nullptr;  // [n] bf16
};

enum class QkNorm : int32_t { none = 0, head = 1, full = 2 };
enum class AttentionKind : int32_t { gqa = 0, mla = 1 };
enum class RouterKind : int32_t { softmax_topk = 0, deepseek_v2 = 1 };

// MLA's sizes (DeepSeek's names): C = kv_lora_rank, N = qk_nope_head_dim, R = qk_rope_head_dim,
// Dv = v_head_dim. RoPE rotates interleaved pairs, as DeepSeek-V2 does.
struct MlaConfig {
  int64_t q_lora_rank = 0;  // 0: q projects from x directly
  int64_t kv_lora_rank = 0, nope = 0, rope = 0, v_head_dim = 0;
  float scale = 0.0f;            // the softmax scale (mscale included)
  float latent_eps = 1e-6f;      // q_a_layernorm's and kv_a_layernorm's epsilon
};

struct DecodeLayer {
  const uint16_t* input_norm;           // [H]
  const uint16_t* post_attention_norm;  // [H]
  DecodeProjection q, k, v, o;          // [nH * D, H], [nKV * D, H] x 2, [H, nH * D]
  const uint16_t* q_norm = nullptr;     // [D] (head) or [nH * D] (full)
  const uint16_t* k_norm = nullptr;     // [D] (head) or [nKV * D] (full)
  // MLA instead of k and v: q above ([nH * (N + R), H]) or q_a [q_lora_rank, H] -> q_a_norm ->
  // q_b [nH * (N + R), q_lora_rank]; kv_a [C + R, H] (+ bias); kv_norm [C]; kv_b_proj per head as
  // w_uk [nH, N, C] and w_uv [nH, C, Dv]; o is [H, nH * Dv].
  DecodeProjection q_a, q_b, kv_a;
  const uint16_t* q_a_norm = nullptr;
  const uint16_t* kv_norm = nullptr;
  const uint16_t* w_uk = nullptr;
  const uint16_t* w_uv = nullptr;
  // An MoE layer has a router; a dense layer has only gate, up, down.
  QuantMatrix router{};                 // [E, H] bf16 (bits 16)
  const int64_t* expert_table = nullptr;  // moe_experts' slot rows [slots, 3, 8], read every step
  int64_t num_slots = 0;
  const int32_t* remap = nullptr;         // [A + 1, E]: adapter rerouting, or null
  int64_t adapters = 0;                   // A
  DecodeProjection gate, up, down;        // the shared expert or the dense MLP: [I, H] x 2, [H, I]
  QuantMatrix shared_gate{};              // [1, H] bf16: sigmoid gate of the shared expert, or absent
  const uint16_t* sigmoid = nullptr;      // [65536]: torch's bf16 sigmoid of every bf16 bit pattern
};

// MLA: kv_heads 1 and head_dim R (the rotary tables' width).
struct DecodeConfig {
  int64_t hidden, heads, kv_heads, head_dim, top_k;
  bool norm_topk_prob;
  QkNorm qk_norm;
  float eps;
  AttentionKind attention = AttentionKind::gqa;
  MlaConfig mla{};
  RouterKind router = RouterKind::softmax_topk;
  float routed_scaling_factor = 1.0f;
};

// One step's tokens. Token i belongs to a sequence whose layer-l cache is two buffers
// k, v [nKV, capacities[i], D] bf16 at caches[(i * L + l) * 2 + {0, 1}] (MLA: one buffer of rows
// [latent | rotary key], [capacities[i], C + R], at caches[(i * L + l) * 2]); its new key and
// value go to row lengths[i], and it attends to rows 0 .. lengths[i] (itself included) where mask
// allows.
struct DecodeTokens {
  int64_t count;                // N
  uint16_t* hidden;             // [N, H], updated in place
  const int64_t* positions;     // [N] RoPE positions
  const uint16_t* cos;          // [P, D], P > every position
  const uint16_t* sin;          // [P, D]
  const int64_t* caches;        // [N, L, 2] buffer addresses
  const int64_t* lengths;       // [N]
  const int64_t* capacities;    // [N]
  const uint8_t* mask = nullptr;  // [N, mask_stride]: which cached rows a token may see; null: all
  int64_t mask_stride = 0;
  const int32_t* adapters = nullptr;  // [N] adapter ids (-1: the base), or null
};

class DecodeStack {
 public:
  DecodeStack(const DecodeConfig& config, std::vector<DecodeLayer> layers);

  // Runs every layer for the tokens. -ERANGE: a token's cache is full (bad_index = the token) or
  // an adapter or expert id is out of range (bad_index = -1 - layer); -EINVAL: malformed weights.
  Status step(const DecodeTokens& tokens, int64_t* bad_index);

  int64_t num_layers() const { return int64_t(layers_.size()); }

 private:
  Status attention_block(const DecodeLayer& layer, int64_t index, const DecodeTokens& tokens);
  Status mla_block(const DecodeLayer& layer, int64_t index, const DecodeTokens& tokens);
  Status route(const DecodeLayer& layer, const uint16_t* x, int64_t n, int32_t* ids, float* weights);
  Status mlp_block(const DecodeLayer& layer, const DecodeTokens& tokens, int64_t* bad_index);
  Status gated_mlp(const DecodeLayer& layer, int64_t n, uint16_t* out);

  DecodeConfig config_;
  std::vector<DecodeLayer> layers_;
  // Scratch reused by every step; sized by the largest step so far.
  std::vector<uint16_t> x_, q_, k_, v_, rotated_, attended_, mlp_, gate_, up_;
  std::vector<float> f32_, absorb_in_, absorb_out_, logits_;
  std::vector<uint8_t> visible_;
  std::vector<int32_t> ids_, rerouted_;
  std::vector<float> weights_;
  std::vector<std::pair<float, int64_t>> probs_;
  std::vector<ExpertSlot> slots_;
};

// The slot of expert table row `row` (fields: packed, scales, zeros, n, k, bits, group_size,
// scale dtype per projection), as moe_experts reads it.
ExpertSlot expert_slot_from_row(const int64_t* row);

}  // namespace moeweave
