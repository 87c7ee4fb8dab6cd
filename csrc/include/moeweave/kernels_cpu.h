// Public entry points of the torch-free CPU kernels. Pointers are to contiguous row-major
// buffers; each call dispatches on current_isa() and splits its work over the thread pool.
#pragma once

#include <cstdint>

#include "moeweave/dtype.h"
#include "moeweave/quant_formats.h"
#include "moeweave/status.h"

namespace moeweave {

// out[i] = silu(gate[i]) * up[i] for i < n, computed in fp32 and rounded once to `dtype`
// (f32, f16 or bf16). -EINVAL for any other dtype.
Status silu_mul(DType dtype, const void* gate, const void* up, void* out, int64_t n);

// Token rerouting (ExpertWeave): out[t, k] = remap[tok_adapter[t] + 1, topk_ids[t, k]].
// Shapes: topk_ids, out [T, K]; tok_adapter [T]; remap [A + 1, E]. An adapter outside [-1, A) or
// an id outside [0, E) gives -ERANGE, with the flat index of the first offending topk_ids entry
// in *bad_index (out is then partially written).
Status reroute(const int32_t* topk_ids, const int32_t* tok_adapter, const int32_t* remap,
               int32_t* out, int64_t T, int64_t K, int64_t A, int64_t E, int64_t* bad_index);

// Bone's block-affine weight (SPEC.md §4), one tile at a time: for a tile of W [out, in] whose
// first row and column are multiples of r (w points at its first element, ldw its row stride),
//   out[n, j r + a] = W'[n, j r + a] = w[n, j r + a] + B[c, a] + sum_k w[n, j r + k] B[k, a]
// with B = block[n / r] (fp32 [r, r], the tile's block rows in order) and c = n % r, for n < rows
// and j r + a < cols: W'_ij = W_ij (I + B_i) + B_i, computed in fp32 and rounded once to `dtype`
// (f32, f16 or bf16, that of w and out). rows and cols are multiples of r, else -EINVAL.
Status bone_bat_form(DType dtype, const void* w, int64_t ldw, const float* block, int64_t r, int64_t rows,
                     int64_t cols, void* out, int64_t ldo);

// The gradient of Bone's block-affine blocks from the gradient G of W' (fp32 sums):
//   dblock[i] [r, r] = sum over blocks j of (W_ij + I)^T G_ij
// for the block rows i < rows / r of a W tile (w, ldw) spanning cols columns and the same tile of
// G (g, ldg), both of `dtype` (f32, f16 or bf16). Same alignment rules as bone_bat_form.
Status bone_bat_block_grad(DType dtype, const void* w, int64_t ldw, const void* g, int64_t ldg, int64_t r,
                           int64_t rows, int64_t cols, float* dblock);

// y [m, w.n] fp32 = x [m, w.k] w^T, for a quantised (bits 2/3/4/8) or bf16 (bits 16) w; x is
// f32 or bf16, contiguous. Quantised weights use int8 activations, quantised per 32 columns.
Status quant_matmul(const QuantMatrix& w, DType x_dtype, const void* x, int64_t m, float* y);

// out [row_end - row_begin, w.k] bf16 (contiguous) = rows [row_begin, row_end) of a 2/3/4/8-bit w,
// dequantised (scale * (q - zero), rounded to nearest even): a panel for a bf16 GEMM. row_begin
// must be a multiple of 16 (a tile) and row_end at most w.n; -EINVAL otherwise.
Status quant_dequantize_bf16(const QuantMatrix& w, int64_t row_begin, int64_t row_end, uint16_t* out);

// Quantisation of w [n, k] (f32, f16 or bf16; row stride ldw elements) into the layout above:
// packed [N/16, Kp/32, quant_unit_bytes(bits)], scales and zeros [N/16, Kp/group_size, 16] of
// scale_dtype (Kp = k padded to the group size). Per row and group, with the range clipped by
// a ratio: symmetric, scale = ratio * absmax / (2^(b-1) - 1) and q = clamp(round(w / scale),
// -2^(b-1), 2^(b-1) - 1) + 2^(b-1), no zeros written; asymmetric, with lo = ratio * min(w, 0)
// and hi = ratio * max(w, 0), scale = (hi - lo) / (2^b - 1), zero = clamp(round(-lo / scale), 0,
// 2^b - 1), q = clamp(round(w / scale) + zero, 0, 2^b - 1). A scale is rounded to scale_dtype
// before it divides, and one that is not positive becomes 1. One clip ratio of 1 is
// round-to-nearest; with several, each group keeps the first ratio of least squared error.
// Padding rows get q = 0, scale 1, zero 0. moeweave.quant.quantize is the reference.
Status quant_quantize(DType w_dtype, const void* w, int64_t ldw, int64_t n, int64_t k, int bits, int group_size,
                      bool sym, const float* clip_ratios, int num_ratios, DType scale_dtype, uint8_t* packed,
                      void* scales, void* zeros);

// dx [m, w.k] fp32 = dy [m, w.n] fp32 . w: the product with the transposed weight, for gradients
// with respect to activations. Reads the packed format directly (one fp32 column panel of w at a
// time, never the whole matrix); dy stays exact fp32.
Status quant_matmul_t(const QuantMatrix& w, const float* dy, int64_t m, float* dx);

// One routed expert: its three projections, each in any format QuantMatrix describes.
struct ExpertSlot {
  QuantMatrix gate;  // [I, H]
  QuantMatrix up;    // [I, H]
  QuantMatrix down;  // [H, I]
};

// The routed-expert stage of an MoE layer in one call:
//   y[t] = sum_k weights[t, k] * down_e(silu(gate_e x_t) * up_e x_t),  e = ids[t, k].
// Shapes: x [T, H] (f32 or bf16), ids and weights [T, K] (int32, f32), y [T, H] fp32. Tokens are
// grouped by expert, each expert runs once over its tokens, work is spread over experts and
// output tiles. An id outside [0, num_slots) gives -ERANGE with its flat index in *bad_index; a
// used expert whose shapes differ from [I, H] / [H, I] (I of the first used expert) gives
// -EINVAL with the expert in *bad_index.
Status moe_experts(const ExpertSlot* slots, int64_t num_slots, DType x_dtype, const void* x, int64_t T,
                   int64_t H, const int32_t* ids, const float* weights, int64_t K, float* y, int64_t* bad_index);

// The gradients of moe_experts with respect to x and weights, given dy = dL/dy [T, H] fp32:
// dx [T, H] and dweights [T, K], fp32. The forward is recomputed (same roundings as moe_experts),
// then differentiated with transposed products on the packed weights (quant_matmul_t); errors
// as moe_experts.
Status moe_experts_backward(const ExpertSlot* slots, int64_t num_slots, DType x_dtype, const void* x, int64_t T,
                            int64_t H, const int32_t* ids, const float* weights, int64_t K, const float* dy,
                            float* dx, float* dweights, int64_t* bad_index);

// RMSNorm of rows x [rows, h] with weight [h], all in `dtype` (f32, f16 or bf16), contiguous:
//   out = weight * dtype(x * rsqrt(mean(x^2) + eps)), in fp32 with the roundings of transformers.
Status rms_norm(DType dtype, const void* x, const void* weight, void* out, int64_t rows, int64_t h, float eps);

// Rotary position embedding, half-split layout: for x [B, S, heads, d] and cos, sin [S, d], all
// in `dtype` and contiguous, out = dtype(x * cos) + dtype(rotate_half(x) * sin), rounded again,
// with rotate_half(x) = [-x[d/2:], x[:d/2]] (transformers' roundings). d must be even.
Status rope(DType dtype, const void* x, const void* cos, const void* sin, void* out, int64_t batch, int64_t seq,
            int64_t heads, int64_t d);

// Attention of S queries per sequence over T cached keys and values, with grouped heads (query
// head h reads key/value head h / (heads / kv_heads)):
//   out[b, h, s] = sum_t p_t v[b, h', t],  p = softmax over the t with mask[b, s, t] != 0 of
//                  scale * q[b, h, s] . k[b, h', t]
// in fp32, rounded once to `dtype`. A query that may attend to no key gets zeros. The cache
// tensors may be views into larger buffers: only their innermost dim must be contiguous.
struct AttentionArgs {
  DType dtype;          // of q, k, v and out: f32, f16 or bf16
  const void* q;        // [B, heads, S, dk], contiguous
  const void* k;        // [B, kv_heads, T, dk], strides below
  const void* v;        // [B, kv_heads, T, dv], strides below
  const uint8_t* mask;  // [B, S, T], contiguous; nonzero = may attend
  void* out;            // [B, heads, S, dv], contiguous
  int64_t batch, heads, kv_heads, queries, keys, dk, dv;
  int64_t k_strides[3], v_strides[3];  // in elements, for the B, kv_heads and T dims
  float scale;
};

// -EINVAL for an unsupported dtype, heads not a multiple of kv_heads, or a non-positive size.
Status attention(const AttentionArgs& args);

// `count` independent attention problems (one per decoding sequence, each over its own cache),
// their work items spread over the thread pool together; errors as attention.
Status attention_batch(const AttentionArgs* problems, int64_t count);

// 0 when this kernel lets the process set up an io_uring instance, else -errno
// (-EPERM under Docker's default seccomp profile, -ENOSYS on old kernels).
Status io_uring_probe();

}  // namespace moeweave
