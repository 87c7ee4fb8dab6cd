// CUDA quant_matmul and the fused MoE expert op. Weights stay packed in global memory and are
// dequantised in registers (the layout of quant_formats.h); activations and sums are fp32.
//
// A block of 8 warps computes one 16-row tile for up to MB activation rows, the warps splitting
// the tile's columns. Every thread owns 4 of the tile's rows, 4 * (lane % 4) onwards, which is
// how a 16-byte load of any 2/4/8-bit unit falls: the 16 bytes at 16 * lane of a 512-byte stretch
// are 4 rows x 4 bytes of one chunk. Warp shuffles and a shared-memory pass add the threads' sums
// in a fixed order, so results do not depend on timing. Formats without that layout (3 bits,
// bf16 matrices), groups that pad k, and operands not 16-byte aligned take a per-element path
// with the same ownership.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "moeweave/kernels_cuda.h"
#include "moeweave/quant_formats.h"

namespace moeweave::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarp * kWarps;
constexpr int kStretchBytes = 512;  // one 16-byte load per lane
constexpr int kLoadsInFlight = 4;   // stretches a warp loads before it computes
// One activation row needs few registers: 3 blocks per multiprocessor keep 48 KiB of loads in
// flight on each, what HBM's latency asks for. More rows keep all the registers they need.
constexpr int kBlocksPerSm = 3;

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

__host__ __device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Columns [col, col + N) of activation row x (N a multiple of 4, col a multiple of N, the row
// 16-byte aligned), with vector loads.
template <int N>
__device__ __forceinline__ void load_columns(const void* x, DType dtype, int64_t col, float (&out)[N]) {
  if (dtype == DType::bf16) {
    const auto* src = static_cast<const __nv_bfloat16*>(x) + col;
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const uint2 raw = *reinterpret_cast<const uint2*>(src + i);
      const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
      const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
      out[i] = lo.x, out[i + 1] = lo.y, out[i + 2] = hi.x, out[i + 3] = hi.y;
    }
  } else {
    const auto* src = static_cast<const float*>(x) + col;
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const float4 v = *reinterpret_cast<const float4*>(src + i);
      out[i] = v.x, out[i + 1] = v.y, out[i + 2] = v.z, out[i + 3] = v.w;
    }
  }
}

// The packed path: tile t of w (bits 2, 4 or 8; k a whole number of groups) against activation
// rows x[0 .. rows) (row stride ldx elements); adds this thread's share into acc[m][i], for tile
// row 4 * (lane % 4) + i.
template <int Bits, int MB>
__device__ void packed_partial(const QuantMatrix& w, int64_t t, const void* x, DType x_dtype, int64_t ldx, int rows,
                               float (&acc)[MB][4]) {
  constexpr int kUnitBytes = quant_unit_bytes(Bits);
  constexpr int kUnitsPerStretch = kStretchBytes / kUnitBytes;
  constexpr int kLanesPerUnit = kWarp / kUnitsPerStretch;
  constexpr int kCols = 32 / Bits;   // columns of one row in a lane's 4 bytes
  constexpr int kPlanes = 8 / Bits;  // values per byte
  constexpr uint32_t kMask = Bits == 8 ? 0xffffffffu : Bits == 4 ? 0x0f0f0f0fu : 0x03030303u;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t units = w.k / kQuantUnitCols, groups = w.k / w.group_size;
  const int64_t stretches = (units + kUnitsPerStretch - 1) / kUnitsPerStretch;
  const uint8_t* tile = w.packed + t * units * kUnitBytes;
  const int unit_in_stretch = lane / kLanesPerUnit, chunk = (lane % kLanesPerUnit) / 4, row0 = 4 * (lane % 4);
  const bool sym = w.zeros == nullptr;
  // The bits of 2^23 + q read as a float are exact; subtracting 2^23 (+ the implied zero)
  // leaves q - zero, with no integer-to-float conversion (a slow instruction).
  const float magic = 8388608.0f + (sym ? float(1 << (Bits - 1)) : 0.0f);
  for (int64_t first = warp; first < stretches; first += int64_t(kWarps) * kLoadsInFlight) {
    uint4 data[kLoadsInFlight];
#pragma unroll
    for (int j = 0; j < kLoadsInFlight; ++j) {
      const int64_t s = first + int64_t(j) * kWarps, u = s * kUnitsPerStretch + unit_in_stretch;
      data[j] = s < stretches && u < units ? __ldg(reinterpret_cast<const uint4*>(tile + s * kStretchBytes) + lane)
                                           : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < kLoadsInFlight; ++j) {
      const int64_t s = first + int64_t(j) * kWarps, u = s * kUnitsPerStretch + unit_in_stretch;
      if (s >= stretches || u >= units) continue;
      const uint32_t words[4] = {data[j].x, data[j].y, data[j].z, data[j].w};
      float q[4][kCols];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int plane = 0; plane < kPlanes; ++plane) {
          const uint32_t bytes = (words[i] >> (Bits * plane)) & kMask;
#pragma unroll
          for (int b = 0; b < 4; ++b)
            q[i][plane * 4 + b] = __int_as_float(int(__byte_perm(bytes, 0x4b000000u, 0x7440 + b))) - magic;
        }
      const int64_t s_index = (t * groups + u * kQuantUnitCols / w.group_size) * kQuantTileRows + row0;
      float scale[4], zero[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        scale[i] = load_scale(w.scales, w.scale_dtype, s_index + i);
        zero[i] = sym ? 0.0f : load_scale(w.zeros, w.scale_dtype, s_index + i);
      }
      const int64_t col = u * kQuantUnitCols + chunk * kCols;
#pragma unroll
      for (int m = 0; m < MB; ++m) {
        if (m >= rows) continue;
        float xv[kCols];
        load_columns<kCols>(static_cast<const char*>(x) + m * ldx * int64_t(dtype_size(x_dtype)), x_dtype, col, xv);
        float x_sum = 0.0f;
        if (!sym)
#pragma unroll
          for (int c = 0; c < kCols; ++c) x_sum += xv[c];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float dot = 0.0f;
#pragma unroll
          for (int c = 0; c < kCols; ++c) dot = fmaf(q[i][c], xv[c], dot);
          acc[m][i] = fmaf(scale[i], dot - zero[i] * x_sum, acc[m][i]);
        }
      }
    }
  }
}

// Any format (bits 16: a bf16 [n, k] matrix), any k and alignment, element by element with the
// row ownership of packed_partial; the block's threads take 32-column units in turn.
template <int MB>
__device__ void generic_partial(const QuantMatrix& w, int64_t t, const void* x, DType x_dtype, int64_t ldx, int rows,
                                float (&acc)[MB][4]) {
  const int row0 = 4 * (threadIdx.x % kWarp % 4);
  const bool dense = w.bits == 16;
  const int64_t group = dense ? quant_padded(w.k, kQuantUnitCols) : w.group_size;
  const int64_t kp = quant_padded(w.k, group), units = kp / kQuantUnitCols, groups = kp / group;
  const float implied_zero = dense ? 0.0f : float(1 << (w.bits - 1));
  for (int64_t u = threadIdx.x / 4; u < units; u += kThreads / 4) {
    const uint8_t* unit = w.packed + (t * units + u) * quant_unit_bytes(w.bits);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = t * kQuantTileRows + row0 + i;
      if (dense && row >= w.n) continue;
      const int64_t s_index = (t * groups + u * kQuantUnitCols / group) * kQuantTileRows + row0 + i;
      const float scale = dense ? 1.0f : load_scale(w.scales, w.scale_dtype, s_index);
      const float zero = dense || !w.zeros ? implied_zero : load_scale(w.zeros, w.scale_dtype, s_index);
#pragma unroll
      for (int m = 0; m < MB; ++m) {
        if (m >= rows) continue;
        const char* xm = static_cast<const char*>(x) + m * ldx * int64_t(dtype_size(x_dtype));
        float dot = 0.0f;
        for (int c = 0; c < kQuantUnitCols; ++c) {
          const int64_t col = u * kQuantUnitCols + c;
          if (col >= w.k) break;
          const float value = dense ? __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(w.packed)[row * w.k + col])
                                    : float(quant_value(unit, w.bits, row0 + i, c)) - zero;
          dot = fmaf(value, load_x(xm, x_dtype, col), dot);
        }
        acc[m][i] = fmaf(scale, dot, acc[m][i]);
      }
    }
  }
}

// This thread's share of tile t of w against x[0 .. rows), by the fastest path that applies.
template <int MB>
__device__ void tile_partial(const QuantMatrix& w, int64_t t, const void* x, DType x_dtype, int64_t ldx, int rows,
                             float (&acc)[MB][4]) {
#pragma unroll
  for (int m = 0; m < MB; ++m)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[m][i] = 0.0f;
  const bool packed = w.bits != 16 && w.k % w.group_size == 0 && aligned16(w.packed) && aligned16(x) &&
                      ldx * int64_t(dtype_size(x_dtype)) % 16 == 0;
  if (packed && w.bits == 4) return packed_partial<4, MB>(w, t, x, x_dtype, ldx, rows, acc);
  if (packed && w.bits == 8) return packed_partial<8, MB>(w, t, x, x_dtype, ldx, rows, acc);
  if (packed && w.bits == 2) return packed_partial<2, MB>(w, t, x, x_dtype, ldx, rows, acc);
  generic_partial<MB>(w, t, x, x_dtype, ldx, rows, acc);
}

// The block's sums of acc: thread m * 16 + r (< MB * 16) gets activation row m, tile row r.
// `scratch` holds kWarps * MB * 16 floats; the block may call this again right after.
template <int MB>
__device__ float block_sum(float (&acc)[MB][4], float* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
#pragma unroll
  for (int m = 0; m < MB; ++m)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float v = acc[m][i];
      for (int offset = 4; offset < kWarp; offset *= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane < 4) scratch[(warp * MB + m) * kQuantTileRows + 4 * lane + i] = v;
    }
  __syncthreads();
  float total = 0.0f;
  if (threadIdx.x < MB * kQuantTileRows)
    for (int w = 0; w < kWarps; ++w) total += scratch[w * MB * kQuantTileRows + threadIdx.x];
  __syncthreads();
  return total;
}

// y [m, w.n] = x [m, w.k] w^T; grid.x covers tiles, grid.y blocks of MB rows of x.
template <int MB>
__global__ void __launch_bounds__(kThreads, MB == 1 ? kBlocksPerSm : 1)
    quant_matmul_kernel(QuantMatrix w, const void* x, DType x_dtype, int64_t m, float* y) {
  __shared__ float scratch[kWarps * MB * kQuantTileRows];
  const int64_t t = blockIdx.x, first = int64_t(blockIdx.y) * MB;
  const int rows = int(m - first < MB ? m - first : MB);
  float acc[MB][4];
  const char* rows_x = static_cast<const char*>(x) + first * w.k * int64_t(dtype_size(x_dtype));
  tile_partial<MB>(w, t, rows_x, x_dtype, w.k, rows, acc);
  const float total = block_sum<MB>(acc, scratch);
  const int row = threadIdx.x % kQuantTileRows, i = threadIdx.x / kQuantTileRows;
  if (threadIdx.x < MB * kQuantTileRows && i < rows && t * kQuantTileRows + row < w.n)
    y[(first + i) * w.n + t * kQuantTileRows + row] = total;
}

// Phase 1 of the MoE op: h[p] = silu(gate_e x_t) * up_e x_t for pair p = (t, k), e = ids[p];
// grid.x covers the tiles of I.
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) moe_gate_up_kernel(const ExpertSlot* slots, int64_t num_slots, const void* x,
                                                               DType x_dtype, int64_t H, const int32_t* ids, int64_t K,
                                                               int64_t I, float* h) {
  __shared__ float scratch[kWarps * kQuantTileRows];
  const int64_t t = blockIdx.x, p = blockIdx.y;
  const int32_t e = ids[p];
  if (e < 0 || e >= num_slots) return;
  const void* xt = static_cast<const char*>(x) + (p / K) * H * int64_t(dtype_size(x_dtype));
  float acc[1][4];
  tile_partial<1>(slots[e].gate, t, xt, x_dtype, H, 1, acc);
  const float gate = block_sum<1>(acc, scratch);
  tile_partial<1>(slots[e].up, t, xt, x_dtype, H, 1, acc);
  const float up = block_sum<1>(acc, scratch);
  const int64_t row = t * kQuantTileRows + threadIdx.x;
  if (threadIdx.x < kQuantTileRows && row < I) h[p * I + row] = gate / (1.0f + __expf(-gate)) * up;
}

// Phase 2: out[p] = down_e h[p]; grid.x covers the tiles of H.
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) moe_down_kernel(const ExpertSlot* slots, int64_t num_slots, const float* h,
                                                            int64_t I, const int32_t* ids, int64_t H, float* out) {
  __shared__ float scratch[kWarps * kQuantTileRows];
  const int64_t t = blockIdx.x, p = blockIdx.y;
  const int32_t e = ids[p];
  if (e < 0 || e >= num_slots) return;
  float acc[1][4];
  tile_partial<1>(slots[e].down, t, h + p * I, DType::f32, I, 1, acc);
  const float total = block_sum<1>(acc, scratch);
  const int64_t row = t * kQuantTileRows + threadIdx.x;
  if (threadIdx.x < kQuantTileRows && row < H) out[p * H + row] = total;
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

// out [row_end - row_begin, w.k] bf16 = those rows of w dequantised (scale * (q - zero), rounded
// to nearest even: the CPU's quant_dequantize_bf16). blockIdx.y is a tile of 16 rows. A thread
// writes 8 neighbouring columns of one row, which lie in one unit and so share a group's scale;
// the 16 threads of a tile's rows come first, so a warp reads 2 x 64 contiguous packed bytes and
// writes whole 32-byte sectors. Index arithmetic stays 32-bit: 64-bit division is emulated.
// packed_words: bits 2/4/8 and w.packed 16-byte aligned, read as one 32-bit word per 4 columns;
// vector_store: k a multiple of 8 and out 16-byte aligned.
constexpr int kDequantChunk = 8;
__global__ void dequantize_bf16_kernel(QuantMatrix w, int64_t tile_begin, int64_t row_end, int units, int groups,
                                       bool packed_words, bool vector_store, __nv_bfloat16* out) {
  const int local = blockIdx.x * blockDim.x + threadIdx.x, rr = local % kQuantTileRows;
  const int c0 = local / kQuantTileRows * kDequantChunk;
  const int64_t t = tile_begin + blockIdx.y, r = t * kQuantTileRows + rr;
  if (c0 >= w.k || r >= row_end) return;
  const uint8_t* unit = w.packed + (t * units + c0 / kQuantUnitCols) * quant_unit_bytes(w.bits);
  const int64_t s = (t * groups + c0 / w.group_size) * kQuantTileRows + rr;
  const float scale = load_scale(w.scales, w.scale_dtype, s);
  const float zero = w.zeros ? load_scale(w.zeros, w.scale_dtype, s) : float(1 << (w.bits - 1));
  const int quad = c0 % kQuantUnitCols / 4;  // even: the chunk is quads quad and quad + 1
  alignas(16) __nv_bfloat16 v[kDequantChunk];
  if (packed_words) {
    const int planes = 8 / w.bits;
    const uint32_t mask = (1u << w.bits) - 1;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int q = quad + h, shift = w.bits * (q % planes);
      const uint32_t word = *reinterpret_cast<const uint32_t*>(unit + q / planes * kQuantQuadBytes + rr * 4);
#pragma unroll
      for (int b = 0; b < 4; ++b)
        v[4 * h + b] = __float2bfloat16_rn(scale * (float((word >> (8 * b + shift)) & mask) - zero));
    }
  } else {
#pragma unroll
    for (int j = 0; j < kDequantChunk; ++j)
      v[j] = __float2bfloat16_rn(scale * (float(quant_value(unit, w.bits, rr, 4 * quad + j)) - zero));
  }
  __nv_bfloat16* dst = out + (r - tile_begin * kQuantTileRows) * w.k + c0;
  if (vector_store) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
    return;
  }
  for (int j = 0; j < kDequantChunk && c0 + j < w.k; ++j) dst[j] = v[j];
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

unsigned tiles_of(int64_t rows) { return unsigned(quant_padded(rows, kQuantTileRows) / kQuantTileRows); }

template <int MB>
void launch_quant_matmul(const QuantMatrix& w, DType x_dtype, const void* x, int64_t m, float* y, cudaStream_t s) {
  const dim3 grid(tiles_of(w.n), unsigned((m + MB - 1) / MB));
  quant_matmul_kernel<MB><<<grid, kThreads, 0, s>>>(w, x, x_dtype, m, y);
}

}  // namespace

Status quant_matmul(const QuantMatrix& w, DType x_dtype, const void* x, int64_t m, float* y, void* stream) {
  if (m == 0 || w.n == 0) return kOk;
  auto s = static_cast<cudaStream_t>(stream);
  if (m >= 8) launch_quant_matmul<8>(w, x_dtype, x, m, y, s);
  else if (m >= 4) launch_quant_matmul<4>(w, x_dtype, x, m, y, s);
  else if (m >= 2) launch_quant_matmul<2>(w, x_dtype, x, m, y, s);
  else launch_quant_matmul<1>(w, x_dtype, x, m, y, s);
  return cudaGetLastError() == cudaSuccess ? kOk : -EIO;
}

Status quant_matmul_t(const QuantMatrix& w, const float* dy, int64_t m, float* dx, void* stream) {
  if (m == 0 || w.k == 0) return kOk;
  constexpr int kColumnThreads = 128;
  const dim3 grid(unsigned((w.k + kColumnThreads - 1) / kColumnThreads), unsigned(m));
  quant_matmul_t_kernel<<<grid, kColumnThreads, 0, static_cast<cudaStream_t>(stream)>>>(w, dy, dx);
  return cudaGetLastError() == cudaSuccess ? kOk : -EIO;
}

Status quant_dequantize_bf16(const QuantMatrix& w, int64_t row_begin, int64_t row_end, uint16_t* out, void* stream) {
  if (row_end == row_begin || w.k == 0) return kOk;
  constexpr int kBlock = 256;
  const int64_t kp = quant_padded(w.k, w.group_size), chunks = (w.k + kDequantChunk - 1) / kDequantChunk;
  const bool packed_words = w.bits != 3 && aligned16(w.packed);
  const bool vector_store = w.k % kDequantChunk == 0 && aligned16(out);
  constexpr int64_t kMaxGridY = 65535;
  const int64_t tiles = tiles_of(row_end - row_begin);
  for (int64_t first = 0; first < tiles; first += kMaxGridY) {
    const dim3 grid(unsigned((chunks * kQuantTileRows + kBlock - 1) / kBlock),
                    unsigned(std::min(kMaxGridY, tiles - first)));
    dequantize_bf16_kernel<<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        w, row_begin / kQuantTileRows + first, row_end, int(kp / kQuantUnitCols), int(kp / w.group_size),
        packed_words, vector_store, reinterpret_cast<__nv_bfloat16*>(out) + first * kQuantTileRows * w.k);
  }
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
    moe_gate_up_kernel<<<dim3(tiles_of(I), unsigned(T * K)), kThreads, 0, s>>>(
        device_slots, num_slots, x, x_dtype, H, ids, K, I, h);
    moe_down_kernel<<<dim3(tiles_of(H), unsigned(T * K)), kThreads, 0, s>>>(
        device_slots, num_slots, h, I, ids, H, out);
  }
  moe_combine_kernel<<<unsigned((T * H + 255) / 256), 256, 0, s>>>(out, weights, ids, num_slots, T, K, H, y);
  return cudaGetLastError() == cudaSuccess ? kOk : -EIO;
}

}  // namespace moeweave::cuda
