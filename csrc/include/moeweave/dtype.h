// Element types the kernels understand. The bindings map DLPack type codes onto these; the
// kernels only ever see this enum and raw pointers.
#pragma once

#include <cstddef>
#include <cstdint>

// Helpers of these headers are callable from CUDA device code too.
#ifdef __CUDACC__
#define MOEWEAVE_HOST_DEVICE __host__ __device__
#else
#define MOEWEAVE_HOST_DEVICE
#endif

namespace moeweave {

enum class DType : uint8_t { f32, f16, bf16, i32, i64, u8, i8 };

MOEWEAVE_HOST_DEVICE constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u8: return 1;
    case DType::i8: return 1;
  }
  return 0;
}

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
    case DType::i8: return "int8";
  }
  return "?";
}

}  // namespace moeweave
