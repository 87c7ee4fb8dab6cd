// What the CUDA runtime sees (for `moeweave info` and error messages), and host-to-device copies.
#include <cuda_runtime.h>

#include "moeweave/kernels_cuda.h"

namespace moeweave::cuda {

int device_count() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  return err == cudaSuccess ? count : -static_cast<int>(err);
}

int runtime_version() {
  int version = 0;
  cudaRuntimeGetVersion(&version);
  return version;
}

Status copy_to_device(void* dst, const void* src, int64_t bytes, void* stream) {
  return cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)) == cudaSuccess
             ? kOk
             : -EIO;
}

const char* last_error() { return cudaGetErrorString(cudaGetLastError()); }

}  // namespace moeweave::cuda
