// AVX-512 attention: 16-lane conversion of key/value rows to fp32, dot products and value
// accumulation (masked for the last lanes), vector exp for the softmax; the loop structure is
// attention_rows.h.
#include "attention_rows.h"
#include "simd_avx512.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

using namespace avx512;

// Lane j of the result = the sum of the 16 lanes of x[j]: pairwise unpack-and-add within
// 128-bit lanes (two levels), then across them (two levels). gcc 12 flags the
// _mm512_undefined_ps() inside its own shuffle intrinsics as uninitialised (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
inline __m512 sum_each(const __m512 (&x)[16]) {
  __m512 pairs[8], quads[4], halves[2];
  for (int k = 0; k < 8; ++k)
    pairs[k] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * k], x[2 * k + 1]), _mm512_unpackhi_ps(x[2 * k], x[2 * k + 1]));
  for (int k = 0; k < 4; ++k) {
    const __m512d a = _mm512_castps_pd(pairs[2 * k]), b = _mm512_castps_pd(pairs[2 * k + 1]);
    quads[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  for (int k = 0; k < 2; ++k)
    halves[k] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * k], quads[2 * k + 1], 0x88),
                              _mm512_shuffle_f32x4(quads[2 * k], quads[2 * k + 1], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], 0x88), _mm512_shuffle_f32x4(halves[0], halves[1], 0xdd));
}
#pragma GCC diagnostic pop

struct Avx512Ops {
  static void to_float(DType dtype, const char* row, float* out, int64_t d) {
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 m = lanes(d - i);
      switch (dtype) {
        case DType::bf16: store_f32(out + i, load_bf16(reinterpret_cast<const uint16_t*>(row) + i, m), m); break;
        case DType::f16: store_f32(out + i, load_f16(reinterpret_cast<const uint16_t*>(row) + i, m), m); break;
        default: store_f32(out + i, load_f32(reinterpret_cast<const float*>(row) + i, m), m);
      }
    }
  }
  // 16 keys at once: one accumulator per key over d, then the 16 accumulators are reduced
  // together (lane j of the result = key j's sum) instead of one horizontal sum per key.
  static void scores(const float* q, const float* keys, int64_t n, int64_t d, float* out) {
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 m = lanes(d - i);
      const __m512 qv = load_f32(q + i, m);
      if (n == 16) {
        for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(qv, load_f32(keys + j * d + i, m), acc[j]);
      } else {
        for (int j = 0; j < n; ++j) acc[j] = _mm512_fmadd_ps(qv, load_f32(keys + j * d + i, m), acc[j]);
      }
    }
    store_f32(out, sum_each(acc), lanes(n));
  }
  // acc[0, d) += sum_j p[j] values[j] for n <= 16 rows, in registers 128 columns at a time.
  static void accumulate(const float* p, const float* values, int64_t n, int64_t d, float* acc) {
    int64_t c = 0;
    for (; c + 128 <= d; c += 128) {
      __m512 sum[8];
      for (int v = 0; v < 8; ++v) sum[v] = _mm512_loadu_ps(acc + c + 16 * v);
      for (int64_t j = 0; j < n; ++j) {
        const __m512 pj = _mm512_set1_ps(p[j]);
        for (int v = 0; v < 8; ++v) sum[v] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(values + j * d + c + 16 * v), sum[v]);
      }
      for (int v = 0; v < 8; ++v) _mm512_storeu_ps(acc + c + 16 * v, sum[v]);
    }
    for (; c < d; c += 16) {
      const __mmask16 m = lanes(d - c);
      __m512 sum = load_f32(acc + c, m);
      for (int64_t j = 0; j < n; ++j) sum = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), load_f32(values + j * d + c, m), sum);
      store_f32(acc + c, sum, m);
    }
  }
  static void exp_shifted(float* x, int64_t n, float shift) {
    const __m512 s = _mm512_set1_ps(shift);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = lanes(n - i);
      store_f32(x + i, exp_ps(_mm512_sub_ps(load_f32(x + i, m), s)), m);
    }
  }
};

}  // namespace

const AttentionKernel kAttentionAvx512 = attention_items<Avx512Ops>;

}  // namespace moeweave::cpu
