// The per-ISA kernel tables. Each *_scalar/_avx2/_avx512.cpp file defines one table, compiled
// with only its level's flags; the dispatchers (silu_mul.cpp, reroute.cpp) index them by
// current_isa(). A table entry works on a contiguous sub-range, so threading stays outside.
#pragma once

#include <cstdint>

#include "moeweave/isa.h"

namespace moeweave::cpu {

struct SiluMulKernels {
  void (*f32)(const float* gate, const float* up, float* out, int64_t n);
  void (*f16)(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t n);
  void (*bf16)(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t n);
};

// Rows [t_begin, t_end) of SPEC §2's rerouting; returns -1, or the flat index into topk_ids of
// the first entry whose adapter or expert id is out of range.
using RerouteKernel = int64_t (*)(const int32_t* topk_ids, const int32_t* tok_adapter,
                                  const int32_t* remap, int32_t* out, int64_t t_begin,
                                  int64_t t_end, int64_t K, int64_t A, int64_t E);

extern const SiluMulKernels kSiluMulScalar, kSiluMulAvx2, kSiluMulAvx512;
extern const RerouteKernel kRerouteScalar, kRerouteAvx2, kRerouteAvx512;

template <typename T>
const T& for_isa(Isa isa, const T& scalar, const T& avx2, const T& avx512) {
  switch (isa) {
    case Isa::avx512: return avx512;
    case Isa::avx2: return avx2;
    case Isa::scalar: break;
  }
  return scalar;
}

}  // namespace moeweave::cpu
