// CUDA rerouting: one thread per (token, slot), a single launch for the whole batch. No host
// synchronisation, so it can be captured in a CUDA graph; out-of-range inputs yield -1.
#include <cuda_runtime.h>

#include "moeweave/kernels_cuda.h"

namespace moeweave::cuda {
namespace {

__global__ void reroute_kernel(const int32_t* __restrict__ topk_ids,
                               const int32_t* __restrict__ tok_adapter,
                               const int32_t* __restrict__ remap, int32_t* __restrict__ out,
                               int64_t T, int64_t K, int64_t A, int64_t E) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * K) return;
  const int32_t adapter = tok_adapter[i / K];
  const int32_t id = topk_ids[i];
  const bool ok = adapter >= -1 && adapter < A && id >= 0 && id < E;
  out[i] = ok ? remap[(int64_t(adapter) + 1) * E + id] : -1;
}

}  // namespace

Status reroute(const int32_t* topk_ids, const int32_t* tok_adapter, const int32_t* remap,
               int32_t* out, int64_t T, int64_t K, int64_t A, int64_t E, void* stream) {
  if (T == 0 || K == 0) return kOk;
  constexpr int kThreads = 256;
  const int64_t blocks = (T * K + kThreads - 1) / kThreads;
  reroute_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      topk_ids, tok_adapter, remap, out, T, K, A, E);
  return cudaGetLastError() == cudaSuccess ? kOk : -EIO;
}

}  // namespace moeweave::cuda
