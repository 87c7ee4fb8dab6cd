// The AVX-512 attention primitives (Ops of attention_rows.h): 16-lane conversion of key/value
// rows to fp32, dot products and value accumulation (masked for the last lanes), vector exp for
// the softmax. attention_avx512.cpp instantiates the item loop on them; attention_avx512bf16.cpp
// extends them with bf16 pair products. Include only from files with the AVX-512 flags.
#pragma once

#include <cmath>

#include "attention_rows.h"
#include "simd_avx512.h"

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
  static constexpr bool kPairs = false;
  static void to_float(DType dtype, const char* row, float* out, int64_t d) {
    switch (dtype) {
      case DType::bf16: return convert(reinterpret_cast<const uint16_t*>(row), out, d, load_bf16);
      case DType::f16: return convert(reinterpret_cast<const uint16_t*>(row), out, d, load_f16);
      default: return convert(reinterpret_cast<const float*>(row), out, d, load_f32);
    }
  }
  static void from_float(DType dtype, const float* in, char* row, int64_t d) {
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 m = lanes(d - i);
      const __m512 x = load_f32(in + i, m);
      switch (dtype) {
        case DType::bf16: store_bf16(reinterpret_cast<uint16_t*>(row) + i, x, m); break;
        case DType::f16: store_f16(reinterpret_cast<uint16_t*>(row) + i, x, m); break;
        default: store_f32(reinterpret_cast<float*>(row) + i, x, m);
      }
    }
  }
  template <typename T, typename Load>
  static void convert(const T* row, float* out, int64_t d, Load load) {
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 m = lanes(d - i);
      store_f32(out + i, load(row + i, m), m);
    }
  }
  // 16 keys at once: one accumulator per key over d, then the 16 accumulators are reduced
  // together (lane j of the result = key j's sum) instead of one horizontal sum per key. The
  // block always has 16 rows (zeros past n), so every loop bound is a constant and the 16
  // accumulators stay in registers (with a bound of n they lived on the stack).
  // Kept out of line: inlined into attention_items, a decode step's attention ran 5-15 % slower
  // (bench_attention kv:8, alternating runs with the out-of-line build).
  __attribute__((noinline)) static void scores(const float* q, const float* keys, int64_t n, int64_t d,
                                               float* out) {
    static_assert(kKeyBlock == 16, "one accumulator lane per key");
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
      const __m512 qv = _mm512_loadu_ps(q + i);
      for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(keys + j * d + i), acc[j]);
    }
    if (i < d) {
      const __mmask16 m = lanes(d - i);
      const __m512 qv = load_f32(q + i, m);
      for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(qv, load_f32(keys + j * d + i, m), acc[j]);
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
  // Lanes i .. i + 15 (of n) whose key is visible.
  static __mmask16 seen(const uint8_t* visible, int64_t i, int64_t n) {
    const __mmask16 m = lanes(n - i);
    return _mm_mask_test_epi8_mask(m, _mm_maskz_loadu_epi8(m, visible + i), _mm_set1_epi8(-1));
  }
  static float max(const float* x, const uint8_t* visible, int64_t n) {
    const __m512 lowest = _mm512_set1_ps(-INFINITY);
    __m512 best = lowest;
    for (int64_t i = 0; i < n; i += 16) best = _mm512_max_ps(best, _mm512_mask_loadu_ps(lowest, seen(visible, i, n), x + i));
    return _mm512_reduce_max_ps(best);
  }
  // A masked key's exp is set to exactly 0: the vector exp saturates near 1e-38 instead.
  static float exp_visible(float* x, const uint8_t* visible, int64_t n, float shift) {
    const __m512 s = _mm512_set1_ps(shift);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = lanes(n - i);
      const __m512 e = _mm512_maskz_mov_ps(seen(visible, i, n), exp_ps(_mm512_sub_ps(load_f32(x + i, m), s)));
      store_f32(x + i, e, m);
      sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
  }
};

}  // namespace
}  // namespace moeweave::cpu
