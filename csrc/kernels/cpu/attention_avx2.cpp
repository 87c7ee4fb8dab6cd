// AVX2 attention: 8-lane fp32 dot products and value accumulation, vector exp for the softmax;
// the last d % 8 elements go through the scalar element code. Loop structure: attention_rows.h.
#include "attention_rows.h"
#include "simd_avx2.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

using namespace avx2;

inline __m256 load_row(DType dtype, const char* row, int64_t i) {
  switch (dtype) {
    case DType::bf16: return load_bf16(reinterpret_cast<const uint16_t*>(row) + i);
    case DType::f16: return load_f16(reinterpret_cast<const uint16_t*>(row) + i);
    default: return load_f32(reinterpret_cast<const float*>(row) + i);
  }
}

inline float sum_lanes(__m256 x) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  const __m128 pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
}

struct Avx2Ops {
  static float dot(DType dtype, const float* q, const char* row, int64_t d) {
    __m256 even = _mm256_setzero_ps(), odd = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
      even = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load_row(dtype, row, i), even);
      odd = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load_row(dtype, row, i + 8), odd);
    }
    for (; i + 8 <= d; i += 8) even = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load_row(dtype, row, i), even);
    float sum = sum_lanes(_mm256_add_ps(even, odd));
    for (; i < d; ++i) sum += q[i] * element_to_float(dtype, row, i);
    return sum;
  }
  static void axpy(DType dtype, float p, const char* row, float* acc, int64_t d) {
    const __m256 scale = _mm256_set1_ps(p);
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(scale, load_row(dtype, row, i), _mm256_loadu_ps(acc + i)));
    for (; i < d; ++i) acc[i] += p * element_to_float(dtype, row, i);
  }
  static void exp_shifted(float* x, int64_t n, float shift) {
    const __m256 s = _mm256_set1_ps(shift);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
    for (; i < n; ++i) x[i] = std::exp(x[i] - shift);
  }
};

}  // namespace

const AttentionKernel kAttentionAvx2 = attention_rows<Avx2Ops>;

}  // namespace moeweave::cpu
