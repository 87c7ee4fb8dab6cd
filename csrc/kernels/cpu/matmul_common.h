// Building blocks shared by quant_matmul and moe_experts: activation quantisation and the
// threaded drivers around the per-ISA matmul tables. Compiled with baseline flags.
#pragma once

#include <cstdint>
#include <vector>

#include "moeweave/dtype.h"
#include "moeweave/quant_formats.h"
#include "moeweave/status.h"
#include "variants.h"

namespace moeweave::cpu {

// Owns the buffers behind a QuantActs.
struct QuantActsBuffer {
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int32_t> sum;
  QuantActs view(int64_t m, int64_t stride) const { return {q.data(), scale.data(), sum.data(), m, stride}; }
};

// Quantises rows of x [m, k] (f32 or bf16, row stride ldx) to int8 per 32-column unit, symmetric,
// zero-padded to `stride` columns (a multiple of 32).
QuantActs quantize_activations(DType dtype, const void* x, int64_t m, int64_t k, int64_t ldx, int64_t stride,
                               QuantActsBuffer& buffer);

Status check_matrix(const QuantMatrix& w);

// y rows [0, a.m) columns [0, w.n) with row stride ldy, for tiles in [tile_begin, tile_end).
void quant_matmul_tiles(const QuantMatrix& w, const QuantActs& a, int64_t tile_begin, int64_t tile_end,
                        float* y, int64_t ldy);

// The same for a bf16 matrix (w.bits == 16) on float activations x [m, w.k], rows of w as tiles.
void bf16_matmul_tiles(const QuantMatrix& w, const float* x, int64_t m, int64_t tile_begin, int64_t tile_end,
                       float* y, int64_t ldy);

// dx [m, w.k] (= or += ) dy [m, w.n] . w, all fp32 with row strides ldy and ldx; threads split
// the columns of w.
void transposed_matmul(const QuantMatrix& w, const float* dy, int64_t m, int64_t ldy, float* dx, int64_t ldx,
                       bool accumulate);

const QuantMatmulKernels& quant_matmul_kernels();

}  // namespace moeweave::cpu
