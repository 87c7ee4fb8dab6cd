// The per-ISA kernel tables. Each *_scalar/_avx2/_avx512.cpp file defines one table, compiled
// with only its level's flags; the dispatchers (silu_mul.cpp, reroute.cpp) index them by
// current_isa(). A table entry works on a contiguous sub-range, so threading stays outside.
#pragma once

#include <cstdint>

#include "moeweave/dtype.h"
#include "moeweave/isa.h"
#include "moeweave/kernels_cpu.h"
#include "moeweave/quant_formats.h"

namespace moeweave::cpu {

struct SiluMulKernels {
  void (*f32)(const float* gate, const float* up, float* out, int64_t n);
  void (*f16)(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t n);
  void (*bf16)(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t n);
};

// Rows [t_begin, t_end) of the token rerouting (kernels_cpu.h: reroute); returns -1, or the flat index into topk_ids of
// the first entry whose adapter or expert id is out of range.
using RerouteKernel = int64_t (*)(const int32_t* topk_ids, const int32_t* tok_adapter,
                                  const int32_t* remap, int32_t* out, int64_t t_begin,
                                  int64_t t_end, int64_t K, int64_t A, int64_t E);

// Activations quantised for the integer dot products: per row and 32-column unit u,
// x[i, 32u + c] ~= scale[i, u] * q[i, 32u + c], and sum[i, u] = sum over c of q[i, 32u + c].
// Columns past the real K are zero up to `stride`, which is at least the weight's padded K.
struct QuantActs {
  const int8_t* q;      // [m, stride]
  const float* scale;   // [m, stride / 32]
  const int32_t* sum;   // [m, stride / 32]
  int64_t m;
  int64_t stride;

  // Rows (a multiple of 4) a wide product walks per tile before the next tile: 256 KiB of them
  // stay in L2 beside the tile's weights. Walking every row per tile streamed all activations
  // from L3 once per tile: 2048 rows x 4096 ran 12-14 % slower on AVX-512 and 13-15 % on AVX2
  // (alternating builds; 128 and 512 KiB blocks were in between).
  int64_t row_block() const { return stride > 0 && stride < (64 << 10) ? (256 << 10) / stride / 4 * 4 : 4; }
};

struct QuantMatmulKernels {
  // y[i, 16t + r] for all rows i < a.m and tiles t in [tile_begin, tile_end) of a 2/3/4/8-bit w.
  void (*quant)(const QuantMatrix& w, const QuantActs& a, int64_t tile_begin, int64_t tile_end,
                float* y, int64_t ldy);
  // y[i, r] = sum_c w[r, c] x[i, c] for rows r in [row_begin, row_end) of a bf16 w [n, k].
  void (*bf16)(const uint16_t* w, int64_t k, const float* x, int64_t m, int64_t row_begin,
               int64_t row_end, float* y, int64_t ldy);
  // The QuantActs rows of x [rows, k] (f32 or bf16, row stride ldx): per 32-column unit,
  // scale = max|x| / 127 and q = round-to-nearest-even(x * 127 / max|x|), zero past k up to
  // `stride`. Every variant gives bit-identical results.
  void (*quantize_rows)(DType dtype, const void* x, int64_t rows, int64_t k, int64_t ldx, int64_t stride,
                        int8_t* q, float* scale, int32_t* sum);
  // dx[i, c] (= or, with accumulate, +=) sum_r dy[i, r] w[r, c] for i < m and the columns of the
  // 32-column units [unit_begin, unit_end) of any w (quant_transposed.h); dy, dx fp32.
  void (*transposed)(const QuantMatrix& w, const float* dy, int64_t m, int64_t ldy, int64_t unit_begin,
                     int64_t unit_end, float* dx, int64_t ldx, bool accumulate);
  // The rows of tiles [tile_begin, tile_end) of a 2/3/4/8-bit w as bf16: out row i (stride ldo)
  // = round-to-nearest-even(scale * (q - zero)) of w's row 16 * tile_begin + i, columns < w.k.
  void (*dequantize)(const QuantMatrix& w, int64_t tile_begin, int64_t tile_end, uint16_t* out, int64_t ldo);
};

// Bone's block-affine kernels of one element type (bone_blocks.h); an entry works on the rows
// [n_begin, n_end) of a W' tile, or on the block rows [i_begin, i_end) of dB, so threading stays
// outside. Arguments as kernels_cpu.h: bone_bat_form and bone_bat_block_grad.
struct BoneKernels {
  void (*form)(const void* w, int64_t ldw, const float* block, int64_t r, int64_t cols, int64_t n_begin,
               int64_t n_end, void* out, int64_t ldo);
  void (*block_grad)(const void* w, int64_t ldw, const void* g, int64_t ldg, int64_t r, int64_t cols,
                     int64_t i_begin, int64_t i_end, float* dblock);
};

struct BoneKernelsByType {
  BoneKernels f32, f16, bf16;
};

// The portable row quantiser and dequantiser (quant_matmul_scalar.cpp), also the AVX2 table's.
void quantize_rows_scalar(DType dtype, const void* x, int64_t rows, int64_t k, int64_t ldx, int64_t stride,
                          int8_t* q, float* scale, int32_t* sum);
void dequantize_scalar(const QuantMatrix& w, int64_t tile_begin, int64_t tile_end, uint16_t* out, int64_t ldo);

// kernels_cpu.h: quant_quantize's arguments, checked; an entry quantises the weight's 16-row tiles
// [tile_begin, tile_end).
struct QuantizeArgs {
  DType w_dtype;
  const void* w;
  int64_t ldw, n, k;
  int bits, group;
  bool sym;
  const float* clip_ratios;  // fractions of the range, in order; a later one must be strictly better
  int num_ratios;
  DType scale_dtype;
  uint8_t* packed;
  void* scales;
  void* zeros;
};
using QuantizeKernel = void (*)(const QuantizeArgs& args, int64_t tile_begin, int64_t tile_end);

// Work items [item_begin, item_end) of attention (attention_rows.h: attention_items).
using AttentionKernel = void (*)(const AttentionArgs& args, int64_t item_begin, int64_t item_end);

extern const AttentionKernel kAttentionScalar, kAttentionAvx2, kAttentionAvx512;
// Attention over bf16 caches where the CPU has AVX512-BF16 (attention_avx512bf16.cpp).
extern const AttentionKernel kAttentionAvx512Bf16;
extern const QuantMatmulKernels kQuantMatmulScalar, kQuantMatmulAvx2, kQuantMatmulAvx512;
extern const SiluMulKernels kSiluMulScalar, kSiluMulAvx2, kSiluMulAvx512;
extern const RerouteKernel kRerouteScalar, kRerouteAvx2, kRerouteAvx512;
extern const BoneKernelsByType kBoneScalar, kBoneAvx2, kBoneAvx512;
extern const QuantizeKernel kQuantizeScalar, kQuantizeAvx2, kQuantizeAvx512;

template <typename T>
const T& for_isa(Isa isa, const T& scalar, const T& avx2, const T& avx512) {
  switch (isa) {
    case Isa::avx512: return avx512;
    case Isa::avx2: return avx2;
    case Isa::scalar: break;
  }
  return scalar;
}

}  // namespace moeweave::cpu
