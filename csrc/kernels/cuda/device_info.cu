// What the CUDA runtime sees, for `moeweave info` and for the Python loader's error messages.
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

const char* last_error() { return cudaGetErrorString(cudaGetLastError()); }

}  // namespace moeweave::cuda
