// quant_matmul's dispatcher and the shared pieces (matmul_common.h): activations are quantised
// once per call, then output tiles of 16 rows are spread over the thread pool.
#include <algorithm>

#include "matmul_common.h"
#include "moeweave/half.h"
#include "moeweave/isa.h"
#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"

namespace moeweave {
namespace cpu {

const QuantMatmulKernels& quant_matmul_kernels() {
  return for_isa(current_isa(), kQuantMatmulScalar, kQuantMatmulAvx2, kQuantMatmulAvx512);
}

QuantActs quantize_activations(DType dtype, const void* x, int64_t m, int64_t k, int64_t ldx, int64_t stride,
                               QuantActsBuffer& buffer) {
  const int64_t units = stride / kQuantUnitCols;
  buffer.q.resize(m * stride);
  buffer.scale.resize(m * units);
  buffer.sum.resize(m * units);
  const QuantMatmulKernels& kernels = quant_matmul_kernels();
  const size_t x_bytes = dtype_size(dtype);
  parallel_for(m, std::max<int64_t>(1, 65536 / std::max<int64_t>(k, 1)), [&](int64_t begin, int64_t end) {
    kernels.quantize_rows(dtype, static_cast<const char*>(x) + begin * ldx * x_bytes, end - begin, k, ldx, stride,
                          buffer.q.data() + begin * stride, buffer.scale.data() + begin * units,
                          buffer.sum.data() + begin * units);
  });
  return buffer.view(m, stride);
}

Status check_matrix(const QuantMatrix& w) {
  if (w.n < 0 || w.k < 0 || !w.packed) return -EINVAL;
  if (w.bits == 16) return kOk;
  if (w.bits != 2 && w.bits != 3 && w.bits != 4 && w.bits != 8) return -EINVAL;
  if (w.group_size <= 0 || w.group_size % kQuantUnitCols || !w.scales) return -EINVAL;
  if (w.scale_dtype != DType::f32 && w.scale_dtype != DType::f16 && w.scale_dtype != DType::bf16) return -EINVAL;
  return kOk;
}

void quant_matmul_tiles(const QuantMatrix& w, const QuantActs& a, int64_t tile_begin, int64_t tile_end,
                        float* y, int64_t ldy) {
  const QuantMatmulKernels& kernels = quant_matmul_kernels();
  parallel_for(tile_end - tile_begin, 1, [&](int64_t b, int64_t e) {
    kernels.quant(w, a, tile_begin + b, tile_begin + e, y, ldy);
  });
}

void bf16_matmul_tiles(const QuantMatrix& w, const float* x, int64_t m, int64_t tile_begin, int64_t tile_end,
                       float* y, int64_t ldy) {
  const QuantMatmulKernels& kernels = quant_matmul_kernels();
  const int64_t row_begin = tile_begin * kQuantTileRows, row_end = std::min(w.n, tile_end * kQuantTileRows);
  parallel_for(row_end - row_begin, kQuantTileRows, [&](int64_t b, int64_t e) {
    kernels.bf16(reinterpret_cast<const uint16_t*>(w.packed), w.k, x, m, row_begin + b, row_begin + e, y, ldy);
  });
}

void transposed_matmul(const QuantMatrix& w, const float* dy, int64_t m, int64_t ldy, float* dx, int64_t ldx,
                       bool accumulate) {
  const QuantMatmulKernels& kernels = quant_matmul_kernels();
  parallel_for(quant_padded(w.k, kQuantUnitCols) / kQuantUnitCols, 1, [&](int64_t b, int64_t e) {
    kernels.transposed(w, dy, m, ldy, b, e, dx, ldx, accumulate);
  });
}

}  // namespace cpu

Status quant_matmul(const QuantMatrix& w, DType x_dtype, const void* x, int64_t m, float* y) {
  if (Status s = cpu::check_matrix(w)) return s;
  if (x_dtype != DType::f32 && x_dtype != DType::bf16) return -EINVAL;
  if (m == 0 || w.n == 0) return kOk;
  const int64_t tiles = quant_padded(w.n, kQuantTileRows) / kQuantTileRows;
  if (w.bits == 16) {
    std::vector<float> converted;
    const float* xf = static_cast<const float*>(x);
    if (x_dtype == DType::bf16) {
      converted.resize(m * w.k);
      for (int64_t i = 0; i < m * w.k; ++i) converted[i] = bf16_to_float(static_cast<const uint16_t*>(x)[i]);
      xf = converted.data();
    }
    cpu::bf16_matmul_tiles(w, xf, m, 0, tiles, y, w.n);
    return kOk;
  }
  cpu::QuantActsBuffer buffer;
  const cpu::QuantActs acts =
      cpu::quantize_activations(x_dtype, x, m, w.k, w.k, quant_padded(w.k, w.group_size), buffer);
  cpu::quant_matmul_tiles(w, acts, 0, tiles, y, w.n);
  return kOk;
}

Status quant_dequantize_bf16(const QuantMatrix& w, int64_t row_begin, int64_t row_end, uint16_t* out) {
  if (Status s = cpu::check_matrix(w)) return s;
  if (w.bits == 16 || row_begin < 0 || row_begin % kQuantTileRows || row_end < row_begin || row_end > w.n)
    return -EINVAL;
  const QuantMatrix rows = {w.packed, w.scales, w.zeros, row_end, w.k, w.bits, w.group_size, w.scale_dtype};
  const int64_t tile_begin = row_begin / kQuantTileRows;
  const cpu::QuantMatmulKernels& kernels = cpu::quant_matmul_kernels();
  parallel_for(quant_padded(row_end, kQuantTileRows) / kQuantTileRows - tile_begin, 1, [&](int64_t b, int64_t e) {
    kernels.dequantize(rows, tile_begin + b, tile_begin + e, out + b * kQuantTileRows * w.k, w.k);
  });
  return kOk;
}

Status quant_matmul_t(const QuantMatrix& w, const float* dy, int64_t m, float* dx) {
  if (Status s = cpu::check_matrix(w)) return s;
  if (m == 0 || w.k == 0) return kOk;
  cpu::transposed_matmul(w, dy, m, w.n, dx, w.k, false);
  return kOk;
}

}  // namespace moeweave
