// AVX2 attention: 8-lane conversion of key/value rows to fp32, dot products and value
// accumulation, vector exp for the softmax; the last d % 8 elements go through scalar code.
// Loop structure: attention_rows.h.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention_rows.h"
#include "simd_avx2.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

using namespace avx2;

inline float sum_lanes(__m256 x) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  const __m128 pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
}

// Lane j of the result = the sum of the 8 lanes of x[j]: two levels of hadd within 128-bit
// lanes, then the two halves added.
inline __m256 sum_each(const __m256 (&x)[8]) {
  const __m256 low = _mm256_hadd_ps(_mm256_hadd_ps(x[0], x[1]), _mm256_hadd_ps(x[2], x[3]));
  const __m256 high = _mm256_hadd_ps(_mm256_hadd_ps(x[4], x[5]), _mm256_hadd_ps(x[6], x[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(low, high, 0x20), _mm256_permute2f128_ps(low, high, 0x31));
}

struct Avx2Ops : RowByRow<Avx2Ops> {
  static constexpr bool kPairs = false;
  static void to_float(DType dtype, const char* row, float* out, int64_t d) {
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
      switch (dtype) {
        case DType::bf16: store_f32(out + i, load_bf16(reinterpret_cast<const uint16_t*>(row) + i)); break;
        case DType::f16: store_f32(out + i, load_f16(reinterpret_cast<const uint16_t*>(row) + i)); break;
        default: store_f32(out + i, load_f32(reinterpret_cast<const float*>(row) + i));
      }
    }
    for (; i < d; ++i) out[i] = element_to_float(dtype, row, i);
  }
  static void from_float(DType dtype, const float* in, char* row, int64_t d) {
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
      switch (dtype) {
        case DType::bf16: store_bf16(reinterpret_cast<uint16_t*>(row) + i, _mm256_loadu_ps(in + i)); break;
        case DType::f16: store_f16(reinterpret_cast<uint16_t*>(row) + i, _mm256_loadu_ps(in + i)); break;
        default: store_f32(reinterpret_cast<float*>(row) + i, _mm256_loadu_ps(in + i));
      }
    }
    for (; i < d; ++i) store_element(dtype, row, i, in[i]);
  }
  // 8 keys at a time: one accumulator per key over d, then the 8 accumulators are reduced
  // together (lane j of the result = key j's sum) instead of one horizontal sum per key.
  static void row_scores(const float* q, const float* keys, int64_t n, int64_t d, float* out) {
    for (int64_t j0 = 0; j0 < n; j0 += 8) {
      const int64_t count = std::min<int64_t>(8, n - j0);
      if (d % 8) {  // odd head sizes: per key, with a scalar tail
        for (int64_t j = 0; j < count; ++j) out[j0 + j] = dot(q, keys + (j0 + j) * d, d);
        continue;
      }
      __m256 acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
      for (int64_t i = 0; i < d; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        for (int j = 0; j < 8; ++j)
          if (j < count) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(keys + (j0 + j) * d + i), acc[j]);
      }
      float sums[8];
      _mm256_storeu_ps(sums, sum_each(acc));
      std::copy_n(sums, count, out + j0);
    }
  }
  // acc[0, d) += sum_j p[j] values[j], in registers 64 columns at a time.
  static void row_accumulate(const float* p, const float* values, int64_t n, int64_t d, float* acc) {
    int64_t c = 0;
    for (; c + 64 <= d; c += 64) {
      __m256 sum[8];
      for (int v = 0; v < 8; ++v) sum[v] = _mm256_loadu_ps(acc + c + 8 * v);
      for (int64_t j = 0; j < n; ++j) {
        const __m256 pj = _mm256_set1_ps(p[j]);
        for (int v = 0; v < 8; ++v) sum[v] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(values + j * d + c + 8 * v), sum[v]);
      }
      for (int v = 0; v < 8; ++v) _mm256_storeu_ps(acc + c + 8 * v, sum[v]);
    }
    if (c < d)
      for (int64_t j = 0; j < n; ++j) axpy(p[j], values + j * d + c, acc + c, d - c);
  }
  static float dot(const float* a, const float* b, int64_t d) {
    __m256 even = _mm256_setzero_ps(), odd = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
      even = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), even);
      odd = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), odd);
    }
    for (; i + 8 <= d; i += 8) even = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), even);
    float sum = sum_lanes(_mm256_add_ps(even, odd));
    for (; i < d; ++i) sum += a[i] * b[i];
    return sum;
  }
  static void axpy(float p, const float* v, float* acc, int64_t d) {
    const __m256 scale = _mm256_set1_ps(p);
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(scale, _mm256_loadu_ps(v + i), _mm256_loadu_ps(acc + i)));
    for (; i < d; ++i) acc[i] += p * v[i];
  }
  // All-ones lanes for the visible ones of keys i .. i + 7.
  static __m256 seen(const uint8_t* visible, int64_t i) {
    int64_t bytes;
    std::memcpy(&bytes, visible + i, 8);
    const __m256i flags = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes));
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(flags, _mm256_setzero_si256()));
  }
  static float max(const float* x, const uint8_t* visible, int64_t n) {
    const __m256 lowest = _mm256_set1_ps(-INFINITY);
    __m256 best = lowest;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) best = _mm256_max_ps(best, _mm256_blendv_ps(lowest, _mm256_loadu_ps(x + i), seen(visible, i)));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, best);
    float result = *std::max_element(lanes, lanes + 8);
    for (; i < n; ++i)
      if (visible[i]) result = std::max(result, x[i]);
    return result;
  }
  // A masked key's exp is set to exactly 0: the vector exp saturates near 1e-38 instead.
  static float exp_visible(float* x, const uint8_t* visible, int64_t n, float shift) {
    const __m256 s = _mm256_set1_ps(shift);
    __m256 sum = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 e = _mm256_and_ps(seen(visible, i), exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
      _mm256_storeu_ps(x + i, e);
      sum = _mm256_add_ps(sum, e);
    }
    float total = sum_lanes(sum);
    for (; i < n; ++i) {
      x[i] = visible[i] ? std::exp(x[i] - shift) : 0.0f;
      total += x[i];
    }
    return total;
  }
};

}  // namespace

const AttentionKernel kAttentionAvx2 = attention_items<Avx2Ops>;

}  // namespace moeweave::cpu
