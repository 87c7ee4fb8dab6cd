// Scalar quantised matmul: the integer dot products and scale algebra of the SIMD kernels,
// written out element by element. Portable, slow, and the native reference for the others.
#include <algorithm>
#include <cmath>

#include "quant_unpack.h"
#include "quant_transposed.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

void quant_scalar(const QuantMatrix& w, const QuantActs& a, int64_t tile_begin, int64_t tile_end,
                  float* y, int64_t ldy) {
  const int64_t kp = quant_padded(w.k, w.group_size), groups = kp / w.group_size;
  const int64_t units = kp / kQuantUnitCols, act_units = a.stride / kQuantUnitCols;
  const int64_t units_per_group = w.group_size / kQuantUnitCols;
  const int unit_bytes = quant_unit_bytes(w.bits);
  const float implied_zero = float(1 << (w.bits - 1));
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int rows = int(w.n - t * kQuantTileRows < kQuantTileRows ? w.n - t * kQuantTileRows : kQuantTileRows);
    for (int64_t i = 0; i < a.m; ++i) {
      float acc[kQuantTileRows] = {};
      for (int64_t g = 0; g < groups; ++g) {
        float inner[kQuantTileRows] = {};
        float zterm = 0.0f;
        for (int64_t u = g * units_per_group; u < (g + 1) * units_per_group; ++u) {
          const uint8_t* unit = w.packed + (t * units + u) * unit_bytes;
          const int8_t* xq = a.q + i * a.stride + u * kQuantUnitCols;
          const float sx = a.scale[i * act_units + u];
          for (int r = 0; r < kQuantTileRows; ++r) {
            int32_t dot = 0;
            for (int c = 0; c < kQuantUnitCols; ++c) dot += quant_value(unit, w.bits, r, c) * xq[c];
            inner[r] += sx * float(dot);
          }
          zterm += sx * float(a.sum[i * act_units + u]);
        }
        const int64_t sbase = (t * groups + g) * kQuantTileRows;
        for (int r = 0; r < kQuantTileRows; ++r) {
          const float zero = w.zeros ? load_scalar(w.zeros, w.scale_dtype, sbase + r) : implied_zero;
          acc[r] += load_scalar(w.scales, w.scale_dtype, sbase + r) * (inner[r] - zero * zterm);
        }
      }
      for (int r = 0; r < rows; ++r) y[i * ldy + t * kQuantTileRows + r] = acc[r];
    }
  }
}

void bf16_scalar(const uint16_t* w, int64_t k, const float* x, int64_t m, int64_t row_begin,
                 int64_t row_end, float* y, int64_t ldy) {
  for (int64_t r = row_begin; r < row_end; ++r)
    for (int64_t i = 0; i < m; ++i) {
      float acc = 0.0f;
      for (int64_t c = 0; c < k; ++c) acc += bf16_to_float(w[r * k + c]) * x[i * k + c];
      y[i * ldy + r] = acc;
    }
}

}  // namespace

void quantize_rows_scalar(DType dtype, const void* x, int64_t rows, int64_t k, int64_t ldx, int64_t stride,
                          int8_t* q, float* scale, int32_t* sum) {
  const int64_t units = stride / kQuantUnitCols;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t u = 0; u < units; ++u) {
      float row[kQuantUnitCols];
      float amax = 0.0f;
      for (int c = 0; c < kQuantUnitCols; ++c) {
        const int64_t col = u * kQuantUnitCols + c;
        row[c] = col >= k ? 0.0f : load_scalar(x, dtype, i * ldx + col);
        amax = std::max(amax, std::fabs(row[c]));
      }
      const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t total = 0;
      for (int c = 0; c < kQuantUnitCols; ++c) {
        const int32_t v = std::clamp(int32_t(std::nearbyint(row[c] * inverse)), -127, 127);
        q[i * stride + u * kQuantUnitCols + c] = int8_t(v);
        total += v;
      }
      scale[i * units + u] = amax / 127.0f;
      sum[i * units + u] = total;
    }
}

void dequantize_scalar(const QuantMatrix& w, int64_t tile_begin, int64_t tile_end, uint16_t* out, int64_t ldo) {
  const int64_t kp = quant_padded(w.k, w.group_size), groups = kp / w.group_size, units = kp / kQuantUnitCols;
  const int unit_bytes = quant_unit_bytes(w.bits);
  const float implied_zero = float(1 << (w.bits - 1));
  for (int64_t t = tile_begin; t < tile_end; ++t)
    for (int r = 0; r < kQuantTileRows && t * kQuantTileRows + r < w.n; ++r) {
      uint16_t* row = out + ((t - tile_begin) * kQuantTileRows + r) * ldo;
      for (int64_t u = 0; u < units; ++u) {
        const uint8_t* unit = w.packed + (t * units + u) * unit_bytes;
        const int64_t at = (t * groups + u * kQuantUnitCols / w.group_size) * kQuantTileRows + r;
        const float scale = load_scalar(w.scales, w.scale_dtype, at);
        const float zero = w.zeros ? load_scalar(w.zeros, w.scale_dtype, at) : implied_zero;
        for (int c = 0; c < kQuantUnitCols && u * kQuantUnitCols + c < w.k; ++c)
          row[u * kQuantUnitCols + c] = float_to_bf16(scale * (float(quant_value(unit, w.bits, r, c)) - zero));
      }
    }
}

const QuantMatmulKernels kQuantMatmulScalar = {quant_scalar, bf16_scalar, quantize_rows_scalar,
                                              transposed_product, dequantize_scalar};

}  // namespace moeweave::cpu
