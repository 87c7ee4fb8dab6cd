// CUDA silu_mul: grid-stride over the flat range, fp32 math, one rounding to the storage type.
// Eight elements per thread step through 16-byte vector loads when the buffers allow it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "element_convert.cuh"
#include "moeweave/kernels_cuda.h"

namespace moeweave::cuda {
namespace {

template <typename T>
__device__ __forceinline__ T silu_mul_one(T g, T u) {
  const float x = to_float(g);
  return from_float<T>(x / (1.0f + __expf(-x)) * to_float(u));
}

// Vectorised body: each thread handles 16-byte packs; the caller guarantees alignment.
template <typename T>
__global__ void silu_mul_vec_kernel(const T* __restrict__ gate, const T* __restrict__ up,
                                    T* __restrict__ out, int64_t n) {
  constexpr int kPack = 16 / sizeof(T);
  const int64_t packs = n / kPack;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < packs; p += stride) {
    uint4 gv = reinterpret_cast<const uint4*>(gate)[p];
    const uint4 uv = reinterpret_cast<const uint4*>(up)[p];
    T* g = reinterpret_cast<T*>(&gv);
    const T* u = reinterpret_cast<const T*>(&uv);
#pragma unroll
    for (int i = 0; i < kPack; ++i) g[i] = silu_mul_one(g[i], u[i]);
    reinterpret_cast<uint4*>(out)[p] = gv;
  }
  for (int64_t i = packs * kPack + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = silu_mul_one(gate[i], up[i]);
}

template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ gate, const T* __restrict__ up,
                                T* __restrict__ out, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = silu_mul_one(gate[i], up[i]);
}

template <typename T>
Status launch(const void* gate, const void* up, void* out, int64_t n, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t want = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(want < 65535 ? want : 65535);
  auto g = static_cast<const T*>(gate), u = static_cast<const T*>(up);
  auto o = static_cast<T*>(out);
  const bool aligned = ((reinterpret_cast<uintptr_t>(g) | reinterpret_cast<uintptr_t>(u) |
                         reinterpret_cast<uintptr_t>(o)) & 15) == 0;
  if (aligned)
    silu_mul_vec_kernel<T><<<blocks, kThreads, 0, stream>>>(g, u, o, n);
  else
    silu_mul_kernel<T><<<blocks, kThreads, 0, stream>>>(g, u, o, n);
  return cudaGetLastError() == cudaSuccess ? kOk : -EIO;
}

}  // namespace

Status silu_mul(DType dtype, const void* gate, const void* up, void* out, int64_t n, void* stream) {
  if (n == 0) return kOk;
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32: return launch<float>(gate, up, out, n, s);
    case DType::f16: return launch<__half>(gate, up, out, n, s);
    case DType::bf16: return launch<__nv_bfloat16>(gate, up, out, n, s);
    default: return -EINVAL;
  }
}

}  // namespace moeweave::cuda
