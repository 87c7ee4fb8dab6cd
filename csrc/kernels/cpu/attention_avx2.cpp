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

// The 8 x 8 floats of r transposed in place (r[i] lane j = r[j] lane i before): unpacks and
// shuffles within 128-bit lanes, then the halves exchanged.
inline void transpose8(__m256 (&r)[8]) {
  __m256 t[8], u[8];
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  // u[4h + e] 128-bit lane L: rows 4h .. 4h + 3 of column 4L + e
  for (int h = 0; h < 2; ++h) {
    u[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xee);
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xee);
  }
  for (int e = 0; e < 4; ++e) {
    r[e] = _mm256_permute2f128_ps(u[e], u[4 + e], 0x20);
    r[4 + e] = _mm256_permute2f128_ps(u[e], u[4 + e], 0x31);
  }
}

struct Avx2Ops : RowByRow<Avx2Ops> {
  static constexpr bool kPairs = false;
  // Every query row of an item over a converted key block [16, d], as Avx512Ops::scores: from 6
  // rows on (and d a multiple of 8) the block is transposed once into `keys_by_column` [d, 16], so
  // a row's 16 scores are two registers and take two FMAs per element, 6 rows at a time (12
  // chains); fewer rows, or odd head sizes, take row_scores.
  static void scores(const float* q, int64_t rows, int64_t d, const float* block, int64_t n, float* out, int64_t ld,
                     float* keys_by_column) {
    static_assert(kKeyBlock == 16, "two registers of keys");
    if (rows < 6 || d % 8) return RowByRow<Avx2Ops>::scores(q, rows, d, block, n, out, ld, keys_by_column);
    for (int64_t c = 0; c < d; c += 8)
      for (int half = 0; half < 2; ++half) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(block + (8 * half + j) * d + c);
        transpose8(r);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(keys_by_column + (c + i) * 16 + 8 * half, r[i]);
      }
    in_row_blocks<6>(rows, [&](auto size, int64_t r) {
      score_rows<decltype(size)::value>(q + r * d, d, keys_by_column, n, out + r * ld, ld);
    });
  }
  template <int R>
  static void score_rows(const float* q, int64_t d, const float* keys, int64_t n, float* out, int64_t ld) {
    __m256 low[R], high[R];
    for (int r = 0; r < R; ++r) low[r] = high[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; ++i) {
      const __m256 k0 = _mm256_loadu_ps(keys + 16 * i), k1 = _mm256_loadu_ps(keys + 16 * i + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 x = _mm256_set1_ps(q[r * d + i]);
        low[r] = _mm256_fmadd_ps(x, k0, low[r]);
        high[r] = _mm256_fmadd_ps(x, k1, high[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      alignas(32) float row[16];
      _mm256_store_ps(row, low[r]);
      _mm256_store_ps(row + 8, high[r]);
      std::copy_n(row, n, out + r * ld);
    }
  }
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
