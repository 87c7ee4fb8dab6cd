// CUDA quant_matmul and the fused MoE expert op. Weights stay packed in global memory and are
// dequantised in registers (quant_value from quant_formats.h, the same definition the CPU
// kernels follow); activations stay fp32. One warp computes one 16-row tile for one activation
// row: its lanes split the tile's 32-column units and reduce the 16 row sums with shuffles.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "moeweave/kernels_cuda.h"
#include "moeweave/quant_formats.h"

namespace moeweave::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float load_scale(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    case DType::f16: return __half2float(static_cast<const __half*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ float load_x(const void* x, DType dtype, int64_t i) {
  return dtype == DType::bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i])
                              : static_cast<const float*>(x)[i];
}

// Row sums of tile t of w against activation row x [w.k] (any of f32/bf16); lane 0 gets them.
__device__ void tile_dot(const QuantMatrix& w, int64_t t, const void* x, DType x_dtype, float (&rows)[kQuantTileRows]) {
  const int lane = threadIdx.x % kWarp;
  for (int r = 0; r < kQuantTileRows; ++r) rows[r] = 0.0f;
  if (w.bits == 16) {
    const auto* wb = reinterpret_cast<const __nv_bfloat16*>(w.packed);
    for (int r = 0; r < kQuantTileRows; ++r) {
      const int64_t row = t * kQuantTileRows + r;
      if (row >= w.n) break;
      for (int64_t c = lane; c < w.k; c += kWarp) rows[r] += __bfloat162float(wb[row * w.k + c]) * load_x(x, x_dtype, c);
    }
  } else {
    const int64_t kp = quant_padded(w.k, w.group_size), units = kp / kQuantUnitCols, groups = kp / w.group_size;
    const int unit_bytes = quant_unit_bytes(w.bits);
    const float implied_zero = float(1 << (w.bits - 1));
    for (int64_t u = lane; u < units; u += kWarp) {
      const uint8_t* unit = w.packed + (t * units + u) * unit_bytes;
      const int64_t sbase = (t * groups + u * kQuantUnitCols / w.group_size) * kQuantTileRows;
      for (int r = 0; r < kQuantTileRows; ++r) {
        const float scale = load_scale(w.scales, w.scale_dtype, sbase + r);
        const float zero = w.zeros ? load_scale(w.zeros, w.scale_dtype, sbase + r) : implied_zero;
        float sum = 0.0f;
        for (int c = 0; c < kQuantUnitCols; ++c) {
          const int64_t col = u * kQuantUnitCols + c;
          if (col < w.k) sum += (float(quant_value(unit, w.bits, r, c)) - zero) * load_x(x, x_dtype, col);
        }
        rows[r] += scale * sum;
      }
    }
  }
  for (int r = 0; r < kQuantTileRows; ++r)
    for (int offset = kWarp / 2; offset > 0; offset /= 2) rows[r] += __shfl_down_sync(0xffffffffu, rows[r], offset);
}

// y [m, w.n] = x [m, w.k] w^T; grid.x covers tiles (a warp each), grid.y the rows of x.
__global__ void quant_matmul_kernel(QuantMatrix w, const void* x, DType x_dtype, float* y) {
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t i = blockIdx.y;
  if (t * kQuantTileRows >= w.n) return;
  float rows[kQuantTileRows];
  tile_dot(w, t, static_cast<const char*>(x) + i * w.k * (x_dtype == DType::bf16 ? 2 : 4), x_dtype, rows);
  if (threadIdx.x % kWarp == 0)
    for (int r = 0; r < kQuantTileRows && t * kQuantTileRows + r < w.n; ++r) y[i * w.n + t * kQuantTileRows + r] = rows[r];
}

// Phase 1 of the MoE op: h[p] = silu(gate_e x_t) * up_e x_t for pair p = (t, k), e = ids[p].
__global__ void moe_gate_up_kernel(const ExpertSlot* slots, int64_t num_slots, const void* x, DType x_dtype,
                                   int64_t H, const int32_t* ids, int64_t K, int64_t I, float* h) {
  const int64_t t_tile = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t p = blockIdx.y;
  const int32_t e = ids[p];
  if (e < 0 || e >= num_slots || t_tile * kQuantTileRows >= I) return;
  const void* xt = static_cast<const char*>(x) + (p / K) * H * (x_dtype == DType::bf16 ? 2 : 4);
  float gate[kQuantTileRows], up[kQuantTileRows];
  tile_dot(slots[e].gate, t_tile, xt, x_dtype, gate);
  tile_dot(slots[e].up, t_tile, xt, x_dtype, up);
  if (threadIdx.x % kWarp == 0)
    for (int r = 0; r < kQuantTileRows && t_tile * kQuantTileRows + r < I; ++r)
      h[p * I + t_tile * kQuantTileRows + r] = gate[r] / (1.0f + __expf(-gate[r])) * up[r];
}

// Phase 2: out[p] = down_e h[p].
__global__ void moe_down_kernel(const ExpertSlot* slots, int64_t num_slots, const float* h, int64_t I,
                                const int32_t* ids, int64_t H, float* out) {
  const int64_t t_tile = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t p = blockIdx.y;
  const int32_t e = ids[p];
  if (e < 0 || e >= num_slots || t_tile * kQuantTileRows >= H) return;
  float rows[kQuantTileRows];
  tile_dot(slots[e].down, t_tile, h + p * I, DType::f32, rows);
  if (threadIdx.x % kWarp == 0)
    for (int r = 0; r < kQuantTileRows && t_tile * kQuantTileRows + r < H; ++r) out[p * H + t_tile * kQuantTileRows + r] = rows[r];
}

// Phase 3: y[t] = sum_k weights[t, k] out[t, k] (ids out of range contribute nothing).
__global__ void moe_combine_kernel(const float* out, const float* weights, const int32_t* ids, int64_t num_slots,
                                   int64_t T, int64_t K, int64_t H, float* y) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * H) return;
  const int64_t t = i / H, c = i % H;
  float sum = 0.0f;
  for (int64_t k = 0; k < K; ++k)
    if (ids[t * K + k] >= 0 && ids[t * K + k] < num_slots) sum += weights[t * K + k] * out[(t * K + k) * H + c];
  y[i] = sum;
}

// W[r, c] of any format, dequantised (bits 16: the bf16 value).
__device__ __forceinline__ float weight_at(const QuantMatrix& w, int64_t r, int64_t c) {
  if (w.bits == 16) return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(w.packed)[r * w.k + c]);
  const int64_t kp = quant_padded(w.k, w.group_size), units = kp / kQuantUnitCols, groups = kp / w.group_size;
  const int64_t t = r / kQuantTileRows, u = c / kQuantUnitCols;
  const int rr = int(r % kQuantTileRows), cc = int(c % kQuantUnitCols);
  const uint8_t* unit = w.packed + (t * units + u) * quant_unit_bytes(w.bits);
  const int64_t s = (t * groups + c / w.group_size) * kQuantTileRows + rr;
  const float zero = w.zeros ? load_scale(w.zeros, w.scale_dtype, s) : float(1 << (w.bits - 1));
  return load_scale(w.scales, w.scale_dtype, s) * (float(quant_value(unit, w.bits, rr, cc)) - zero);
}

// dx [m, w.k] = dy [m, w.n] w: a thread per output element; the threads of a warp read
// neighbouring columns of the same packed units.
__global__ void quant_matmul_t_kernel(QuantMatrix w, const float* dy, float* dx) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, i = blockIdx.y;
  if (c >= w.k) return;
  float sum = 0.0f;
  for (int64_t r = 0; r < w.n; ++r) sum += dy[i * w.n + r] * weight_at(w, r, c);
  dx[i * w.k + c] = sum;
}

int64_t blocks_for(int64_t rows) {
  const int64_t tiles = quant_padded(rows, kQuantTileRows) / kQuantTileRows;
  return (tiles + kWarpsPerBlock - 1) / kWarpsPerBlock;
}

}  // namespace

Status quant_matmul(const QuantMatrix& w, DType x_dtype, const void* x, int64_t m, float* y, void* stream) {
  if (m == 0 || w.n == 0) return kOk;
  const dim3 grid(unsigned(blocks_for(w.n)), unsigned(m));
  quant_matmul_kernel<<<grid, kWarp * kWarpsPerBlock, 0, static_cast<cudaStream_t>(stream)>>>(w, x, x_dtype, y);
  return cudaGetLastError() == cudaSuccess ? kOk : -EIO;
}

Status quant_matmul_t(const QuantMatrix& w, const float* dy, int64_t m, float* dx, void* stream) {
  if (m == 0 || w.k == 0) return kOk;
  constexpr int kThreads = 128;
  const dim3 grid(unsigned((w.k + kThreads - 1) / kThreads), unsigned(m));
  quant_matmul_t_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(w, dy, dx);
  return cudaGetLastError() == cudaSuccess ? kOk : -EIO;
}

Status moe_experts(const ExpertSlot* device_slots, int64_t num_slots, DType x_dtype, const void* x, int64_t T,
                   int64_t H, int64_t I, const int32_t* ids, const float* weights, int64_t K, float* y,
                   float* workspace, void* stream) {
  if (T == 0 || H == 0) return kOk;
  auto s = static_cast<cudaStream_t>(stream);
  float* h = workspace;               // [T * K, I]
  float* out = workspace + T * K * I;  // [T * K, H]
  if (K > 0 && I > 0) {
    moe_gate_up_kernel<<<dim3(unsigned(blocks_for(I)), unsigned(T * K)), kWarp * kWarpsPerBlock, 0, s>>>(
        device_slots, num_slots, x, x_dtype, H, ids, K, I, h);
    moe_down_kernel<<<dim3(unsigned(blocks_for(H)), unsigned(T * K)), kWarp * kWarpsPerBlock, 0, s>>>(
        device_slots, num_slots, h, I, ids, H, out);
  }
  moe_combine_kernel<<<unsigned((T * H + 255) / 256), 256, 0, s>>>(out, weights, ids, num_slots, T, K, H, y);
  return cudaGetLastError() == cudaSuccess ? kOk : -EIO;
}

}  // namespace moeweave::cuda
