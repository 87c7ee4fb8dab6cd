// The ISA-independent body of the attention kernels. attention_{scalar,avx2,avx512}.cpp each
// instantiate attention_rows<Ops> with their own vector primitives:
//   Ops::dot(dtype, q, row, d)        sum_i q[i] * row[i]       (q fp32, row in `dtype`)
//   Ops::axpy(dtype, p, row, acc, d)  acc[i] += p * row[i]
//   Ops::exp_shifted(x, n, shift)     x[i] = exp(x[i] - shift)
// Everything here has internal linkage, so each ISA file keeps its own copy.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "moeweave/half.h"
#include "moeweave/kernels_cpu.h"

namespace moeweave::cpu {
namespace {

inline float element_to_float(DType dtype, const char* base, int64_t i) {
  switch (dtype) {
    case DType::bf16: return bf16_to_float(reinterpret_cast<const uint16_t*>(base)[i]);
    case DType::f16: return f16_to_float(reinterpret_cast<const uint16_t*>(base)[i]);
    default: return reinterpret_cast<const float*>(base)[i];
  }
}

inline void store_element(DType dtype, char* base, int64_t i, float value) {
  switch (dtype) {
    case DType::bf16: reinterpret_cast<uint16_t*>(base)[i] = float_to_bf16(value); break;
    case DType::f16: reinterpret_cast<uint16_t*>(base)[i] = float_to_f16(value); break;
    default: reinterpret_cast<float*>(base)[i] = value;
  }
}

// One query row at a time: scores over the visible keys, a max-shifted softmax, then the
// probability-weighted sum of value rows. Query heads of one group are consecutive rows, so the
// keys and values they share are still in cache when the next head reads them.
template <typename Ops>
void attention_rows(const AttentionArgs& a, int64_t row_begin, int64_t row_end) {
  thread_local std::vector<float> scratch;
  scratch.resize(a.keys + a.dk + a.dv);
  float* scores = scratch.data();  // [T]
  float* query = scores + a.keys;  // [dk]
  float* acc = query + a.dk;       // [dv]
  const int64_t esize = static_cast<int64_t>(dtype_size(a.dtype)), group = a.heads / a.kv_heads;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t s = row % a.queries, h = row / a.queries % a.heads, b = row / (a.queries * a.heads);
    const char* q = static_cast<const char*>(a.q) + row * a.dk * esize;
    for (int64_t i = 0; i < a.dk; ++i) query[i] = element_to_float(a.dtype, q, i) * a.scale;
    const char* k = static_cast<const char*>(a.k) + (b * a.k_strides[0] + h / group * a.k_strides[1]) * esize;
    const char* v = static_cast<const char*>(a.v) + (b * a.v_strides[0] + h / group * a.v_strides[1]) * esize;
    const uint8_t* visible = a.mask + (b * a.queries + s) * a.keys;
    float best = -INFINITY;
    for (int64_t t = 0; t < a.keys; ++t) {
      scores[t] = visible[t] ? Ops::dot(a.dtype, query, k + t * a.k_strides[2] * esize, a.dk) : -INFINITY;
      best = std::max(best, scores[t]);
    }
    std::fill(acc, acc + a.dv, 0.0f);
    float total = 0.0f;
    if (best > -INFINITY) {
      Ops::exp_shifted(scores, a.keys, best);
      for (int64_t t = 0; t < a.keys; ++t) {
        if (!visible[t]) continue;  // vector exp saturates near 1e-38 instead of reaching 0
        total += scores[t];
        Ops::axpy(a.dtype, scores[t], v + t * a.v_strides[2] * esize, acc, a.dv);
      }
    }
    const float norm = total > 0.0f ? 1.0f / total : 0.0f;
    char* out = static_cast<char*>(a.out) + row * a.dv * esize;
    for (int64_t i = 0; i < a.dv; ++i) store_element(a.dtype, out, i, acc[i] * norm);
  }
}

}  // namespace
}  // namespace moeweave::cpu
