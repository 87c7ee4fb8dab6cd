// CUDA twins of Bone's block-affine kernels (kernels_cpu.h: bone_bat_form, bone_bat_block_grad).
// form: one thread per W' element, its r-long sum in fp32; the threads of a warp share the W row
// segment (one broadcast load per k) and read consecutive columns of B_i. block_grad: one CUDA
// block per row p of one dB_i, one thread per column a, each summing over the block row's rows c
// and blocks j. Both cost r / T of the GEMM the W' panel feeds, so they favour clarity.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cerrno>

#include "element_convert.cuh"
#include "moeweave/kernels_cuda.h"

namespace moeweave::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

template <typename T>
__global__ void form_kernel(const T* __restrict__ w, int64_t ldw, const float* __restrict__ block, int64_t r,
                            int64_t rows, int64_t cols, T* __restrict__ out, int64_t ldo) {
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  const int64_t j0 = col - col % r, a = col % r;
  for (int64_t n = blockIdx.y; n < rows; n += gridDim.y) {
    const T* w_row = w + n * ldw;
    const float* b = block + (n / r) * r * r;  // B_i
    float acc = to_float(w_row[col]) + b[(n % r) * r + a];
    for (int64_t k = 0; k < r; ++k) acc += to_float(w_row[j0 + k]) * b[k * r + a];
    out[n * ldo + col] = from_float<T>(acc);
  }
}

template <typename T>
__global__ void block_grad_kernel(const T* __restrict__ w, int64_t ldw, const T* __restrict__ g, int64_t ldg,
                                  int64_t r, int64_t cols, float* __restrict__ dblock) {
  const int64_t i = blockIdx.x, p = blockIdx.y;
  for (int64_t a = threadIdx.x; a < r; a += blockDim.x) {
    float acc = 0.0f;
    for (int64_t c = 0; c < r; ++c) {
      const T* w_row = w + (i * r + c) * ldw;
      const T* g_row = g + (i * r + c) * ldg;
      const float identity = c == p ? 1.0f : 0.0f;
      for (int64_t j0 = 0; j0 < cols; j0 += r) acc += (to_float(w_row[j0 + p]) + identity) * to_float(g_row[j0 + a]);
    }
    dblock[(i * r + p) * r + a] = acc;
  }
}

template <typename T>
Status launch_form(const void* w, int64_t ldw, const float* block, int64_t r, int64_t rows, int64_t cols, void* out,
                   int64_t ldo, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads), static_cast<unsigned>(std::min(rows, kMaxGridY)));
  form_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(w), ldw, block, r, rows, cols,
                                                static_cast<T*>(out), ldo);
  return cudaGetLastError() == cudaSuccess ? kOk : -EIO;
}

template <typename T>
Status launch_block_grad(const void* w, int64_t ldw, const void* g, int64_t ldg, int64_t r, int64_t rows,
                         int64_t cols, float* dblock, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(rows / r), static_cast<unsigned>(r));
  const int threads = static_cast<int>(std::min<int64_t>(r, kThreads));
  block_grad_kernel<T><<<grid, threads, 0, stream>>>(static_cast<const T*>(w), ldw, static_cast<const T*>(g), ldg, r,
                                                     cols, dblock);
  return cudaGetLastError() == cudaSuccess ? kOk : -EIO;
}

// Calls fn(T{}) with the storage type of `dtype`; -EINVAL for a dtype without one.
template <typename Fn>
Status with_storage_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32: return fn(float{});
    case DType::f16: return fn(__half{});
    case DType::bf16: return fn(__nv_bfloat16{});
    default: return -EINVAL;
  }
}

bool valid_tile(int64_t r, int64_t rows, int64_t cols) {
  return r > 0 && r <= kMaxGridY && rows >= 0 && cols >= 0 && rows % r == 0 && cols % r == 0;
}

}  // namespace

Status bone_bat_form(DType dtype, const void* w, int64_t ldw, const float* block, int64_t r, int64_t rows,
                     int64_t cols, void* out, int64_t ldo, void* stream) {
  if (!valid_tile(r, rows, cols)) return -EINVAL;
  if (rows == 0 || cols == 0) return kOk;
  return with_storage_type(dtype, [&](auto tag) {
    return launch_form<decltype(tag)>(w, ldw, block, r, rows, cols, out, ldo, static_cast<cudaStream_t>(stream));
  });
}

Status bone_bat_block_grad(DType dtype, const void* w, int64_t ldw, const void* g, int64_t ldg, int64_t r,
                           int64_t rows, int64_t cols, float* dblock, void* stream) {
  if (!valid_tile(r, rows, cols)) return -EINVAL;
  if (rows == 0) return kOk;
  return with_storage_type(dtype, [&](auto tag) {
    return launch_block_grad<decltype(tag)>(w, ldw, g, ldg, r, rows, cols, dblock, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace moeweave::cuda
