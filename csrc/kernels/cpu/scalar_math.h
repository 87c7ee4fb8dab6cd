// Scalar element functions shared by the scalar kernels and the SIMD kernels' loop tails, so a
// tail element is computed exactly as the scalar variant computes it. Everything here has
// internal linkage (anonymous namespace): each ISA translation unit compiles its own copy with its
// own flags, and the linker can never swap an AVX-512 copy into the scalar path.
#pragma once

#include <cmath>
#include <cstdint>

#include "moeweave/half.h"

namespace moeweave::cpu {
namespace {

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

inline void silu_mul_f32_tail(const float* g, const float* u, float* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = silu(g[i]) * u[i];
}

inline void silu_mul_f16_tail(const uint16_t* g, const uint16_t* u, uint16_t* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = float_to_f16(silu(f16_to_float(g[i])) * f16_to_float(u[i]));
}

inline void silu_mul_bf16_tail(const uint16_t* g, const uint16_t* u, uint16_t* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    o[i] = float_to_bf16(silu(bf16_to_float(g[i])) * bf16_to_float(u[i]));
}

// Row t of the rerouting, scalar; the SIMD variants use it for rows wider than their vectors.
inline int64_t reroute_row(const int32_t* ids, int32_t adapter, const int32_t* remap, int32_t* out,
                           int64_t t, int64_t K, int64_t A, int64_t E) {
  if (adapter < -1 || adapter >= A) return t * K;
  const int32_t* row = remap + (int64_t(adapter) + 1) * E;
  for (int64_t k = 0; k < K; ++k) {
    const int32_t id = ids[k];
    if (id < 0 || id >= E) return t * K + k;
    out[k] = row[id];
  }
  return -1;
}

}  // namespace
}  // namespace moeweave::cpu
