// The transposed product dx = dy W on a packed (or bf16) matrix W [n, k], for gradients with
// respect to activations: dx [m, k] fp32 = dy [m, n] fp32 . W. Included by each ISA's kernel
// file, so the compiler vectorises the loops with that file's flags; internal linkage.
//
// One call covers the columns of 32-column units [unit_begin, unit_end). Per unit it dequantises
// the unit's column panel of every row of W once into an fp32 buffer [n, 32] (W is never
// dequantised as a whole), then streams dy rows against it, four at a time with 4 x 32 fp32
// accumulators. dy stays fp32: the gradient sees exact activations, unlike the forward's int8.
#pragma once

#include <cstdint>
#include <vector>

#include "quant_unpack.h"

namespace moeweave::cpu {
namespace {

constexpr int kTransposedRows = 4;  // dy rows per pass over a panel

// panel [rows of W, 32] = W[:, 32u : 32u + 32] in fp32, zero past k.
template <int BITS>
void dequantize_panel(const QuantMatrix& w, int64_t u, float* panel) {
  const int64_t kp = quant_padded(w.k, w.group_size), units = kp / kQuantUnitCols, groups = kp / w.group_size;
  const int64_t g = u * kQuantUnitCols / w.group_size;
  const float implied_zero = float(1 << (BITS - 1));
  const int unit_bytes = quant_unit_bytes(BITS);
  for (int64_t t = 0; t * kQuantTileRows < w.n; ++t) {
    const uint8_t* unit = w.packed + (t * units + u) * unit_bytes;
    const int64_t sbase = (t * groups + g) * kQuantTileRows;
    const int rows = int(w.n - t * kQuantTileRows < kQuantTileRows ? w.n - t * kQuantTileRows : kQuantTileRows);
    for (int r = 0; r < rows; ++r) {
      const float scale = load_scalar(w.scales, w.scale_dtype, sbase + r);
      const float zero = w.zeros ? load_scalar(w.zeros, w.scale_dtype, sbase + r) : implied_zero;
      float* out = panel + (t * kQuantTileRows + r) * kQuantUnitCols;
      for (int c = 0; c < kQuantUnitCols; ++c) out[c] = scale * (float(quant_value(unit, BITS, r, c)) - zero);
    }
  }
}

void dequantize_bf16_panel(const QuantMatrix& w, int64_t u, float* panel) {
  const uint16_t* rows = reinterpret_cast<const uint16_t*>(w.packed);
  const int64_t c0 = u * kQuantUnitCols;
  for (int64_t r = 0; r < w.n; ++r)
    for (int c = 0; c < kQuantUnitCols; ++c)
      panel[r * kQuantUnitCols + c] = c0 + c < w.k ? bf16_to_float(rows[r * w.k + c0 + c]) : 0.0f;
}

template <int ROWS>
inline void panel_product(const float* panel, int64_t n, const float* dy, int64_t ldy, float* dx, int64_t ldx,
                          int cols, bool accumulate) {
  float acc[ROWS][kQuantUnitCols] = {};
  for (int64_t r = 0; r < n; ++r) {
    const float* p = panel + r * kQuantUnitCols;
    for (int i = 0; i < ROWS; ++i) {
      const float d = dy[i * ldy + r];
      for (int c = 0; c < kQuantUnitCols; ++c) acc[i][c] += d * p[c];
    }
  }
  for (int i = 0; i < ROWS; ++i)
    for (int c = 0; c < cols; ++c) dx[i * ldx + c] = accumulate ? dx[i * ldx + c] + acc[i][c] : acc[i][c];
}

// dx[i, c] (= or +=) sum_r dy[i, r] W[r, c] for i < m and the columns of units [unit_begin,
// unit_end); dy has row stride ldy, dx row stride ldx.
void transposed_product(const QuantMatrix& w, const float* dy, int64_t m, int64_t ldy, int64_t unit_begin,
                        int64_t unit_end, float* dx, int64_t ldx, bool accumulate) {
  std::vector<float> panel(quant_padded(w.n, kQuantTileRows) * kQuantUnitCols);
  for (int64_t u = unit_begin; u < unit_end; ++u) {
    switch (w.bits) {
      case 2: dequantize_panel<2>(w, u, panel.data()); break;
      case 3: dequantize_panel<3>(w, u, panel.data()); break;
      case 4: dequantize_panel<4>(w, u, panel.data()); break;
      case 8: dequantize_panel<8>(w, u, panel.data()); break;
      default: dequantize_bf16_panel(w, u, panel.data());
    }
    const int64_t c0 = u * kQuantUnitCols;
    const int cols = int(w.k - c0 < kQuantUnitCols ? w.k - c0 : kQuantUnitCols);
    int64_t i = 0;
    for (; i + kTransposedRows <= m; i += kTransposedRows)
      panel_product<kTransposedRows>(panel.data(), w.n, dy + i * ldy, ldy, dx + i * ldx + c0, ldx, cols, accumulate);
    for (; i < m; ++i) panel_product<1>(panel.data(), w.n, dy + i * ldy, ldy, dx + i * ldx + c0, ldx, cols, accumulate);
  }
}

}  // namespace
}  // namespace moeweave::cpu
