// Reading one scale of a quantised matrix, whatever its dtype, for the scalar kernel (values
// come from quant_value in quant_formats.h). Internal linkage, like every ISA-shared helper.
#pragma once

#include <cstdint>

#include "moeweave/half.h"
#include "moeweave/quant_formats.h"

namespace moeweave::cpu {
namespace {

inline float load_scalar(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::bf16: return bf16_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::f16: return f16_to_float(static_cast<const uint16_t*>(base)[index]);
    default: return static_cast<const float*>(base)[index];
  }
}

}  // namespace
}  // namespace moeweave::cpu
