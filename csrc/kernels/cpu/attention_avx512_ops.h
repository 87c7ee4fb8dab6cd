// The AVX-512 attention primitives (Ops of attention_rows.h): 16-lane conversion of key/value
// rows to fp32, dot products and value accumulation (masked for the last lanes), vector exp for
// the softmax. attention_avx512.cpp instantiates the item loop on them; attention_avx512bf16.cpp
// extends them with bf16 pair products. Include only from files with the AVX-512 flags.
#pragma once

#include <cmath>
#include <type_traits>

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

// The 16 x 16 32-bit words of r transposed in place (r[i] lane j = r[j] lane i before): unpacks of
// words and of word pairs within 128-bit lanes, then two rounds of 128-bit lane shuffles.
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16], x[16];
  for (int a = 0; a < 8; ++a) {
    t[2 * a] = _mm512_unpacklo_epi32(r[2 * a], r[2 * a + 1]);
    t[2 * a + 1] = _mm512_unpackhi_epi32(r[2 * a], r[2 * a + 1]);
  }
  // x[4e + b] lane L: rows 4b .. 4b + 3 of column 4L + e
  for (int b = 0; b < 4; ++b) {
    x[b] = _mm512_unpacklo_epi64(t[4 * b], t[4 * b + 2]);
    x[4 + b] = _mm512_unpackhi_epi64(t[4 * b], t[4 * b + 2]);
    x[8 + b] = _mm512_unpacklo_epi64(t[4 * b + 1], t[4 * b + 3]);
    x[12 + b] = _mm512_unpackhi_epi64(t[4 * b + 1], t[4 * b + 3]);
  }
  for (int e = 0; e < 4; ++e) {
    const __m512i* X = x + 4 * e;
    const __m512i y0 = _mm512_shuffle_i32x4(X[0], X[1], 0x44), y1 = _mm512_shuffle_i32x4(X[0], X[1], 0xee);
    const __m512i y2 = _mm512_shuffle_i32x4(X[2], X[3], 0x44), y3 = _mm512_shuffle_i32x4(X[2], X[3], 0xee);
    r[e] = _mm512_shuffle_i32x4(y0, y2, 0x88);
    r[4 + e] = _mm512_shuffle_i32x4(y0, y2, 0xdd);
    r[8 + e] = _mm512_shuffle_i32x4(y1, y3, 0x88);
    r[12 + e] = _mm512_shuffle_i32x4(y1, y3, 0xdd);
  }
}

// Registers of `sum` [R][V] per row: V.
template <typename Sum>
constexpr int columns_of(const Sum&) {
  return int(std::extent_v<Sum, 1>);
}

// The 32-bit lanes m at p; a plain load when m is every lane, as it is (a constant once inlined)
// for accumulate_in_registers' whole registers: the masked load slowed the value sums down by up
// to 20 %.
inline __m512i load_lanes(const void* p, __mmask16 m) {
  return m == 0xffff ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(m, p);
}

// R rows of acc (rows of d) += what madd adds over `steps`, with every row's sums in registers
// 128 columns at a time (then 16): madd(step, c, m, sum) adds one step's products for columns c ..
// c + 16 V of each row to sum[R][V] (the lanes m of a register; all of them but at the end).
template <int R, typename Madd>
inline void accumulate_in_registers(float* acc, int64_t d, int64_t steps, Madd&& madd) {
  int64_t c = 0;
  for (; c + 128 <= d; c += 128) {
    __m512 sum[R][8];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < 8; ++v) sum[r][v] = _mm512_loadu_ps(acc + r * d + c + 16 * v);
    for (int64_t s = 0; s < steps; ++s) madd(s, c, __mmask16(0xffff), sum);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < 8; ++v) _mm512_storeu_ps(acc + r * d + c + 16 * v, sum[r][v]);
  }
  for (; c < d; c += 16) {
    const __mmask16 m = lanes(d - c);
    __m512 sum[R][1];
    for (int r = 0; r < R; ++r) sum[r][0] = load_f32(acc + r * d + c, m);
    for (int64_t s = 0; s < steps; ++s) madd(s, c, m, sum);
    for (int r = 0; r < R; ++r) store_f32(acc + r * d + c, sum[r][0], m);
  }
}

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
  // Every query row of an item (q: rows of d floats) over a converted key block [16, d]. From 8
  // rows on, the block is transposed once into `keys_by_column` [d, 16] (lane j = key j), so a
  // row's 16 scores are one register and take one FMA per element, 8 rows at a time with even
  // and odd columns in separate sums (16 chains), no reduction across lanes. Fewer rows (a
  // decode step with fewer than 8 query heads per key head) do not repay the transpose: there
  // each row reduces its own 16 sums (row_scores). out[r * ld + j] for j < n.
  static void scores(const float* q, int64_t rows, int64_t d, const float* block, int64_t n, float* out, int64_t ld,
                     float* keys_by_column) {
    static_assert(kKeyBlock == 16, "one lane per key");
    if (rows < 8) {
      for (int64_t r = 0; r < rows; ++r) row_scores(q + r * d, block, n, d, out + r * ld);
      return;
    }
    for (int64_t c = 0; c < d; c += 16) {
      const __mmask16 m = lanes(d - c);
      __m512i r[16];
      for (int j = 0; j < 16; ++j) r[j] = _mm512_castps_si512(load_f32(block + j * d + c, m));
      transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(keys_by_column + (c + i) * 16, r[i]);
    }
    in_row_blocks<8>(rows, [&](auto size, int64_t r) {
      score_rows<decltype(size)::value>(q + r * d, d, keys_by_column, n, out + r * ld, ld);
    });
  }
  // 16 keys at once: one accumulator per key over d, then the 16 accumulators are reduced
  // together (lane j of the result = key j's sum) instead of one horizontal sum per key. The
  // block always has 16 rows (zeros past n), so every loop bound is a constant and the 16
  // accumulators stay in registers (with a bound of n they lived on the stack).
  // Kept out of line: inlined into attention_items, a decode step's attention ran 5-15 % slower
  // (bench_attention kv:8, alternating runs with the out-of-line build).
  __attribute__((noinline)) static void row_scores(const float* q, const float* keys, int64_t n, int64_t d,
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
  template <int R>
  static void score_rows(const float* q, int64_t d, const float* keys, int64_t n, float* out, int64_t ld) {
    __m512 even[R], odd[R];
    for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= d; i += 2) {
      const __m512 k0 = _mm512_loadu_ps(keys + 16 * i), k1 = _mm512_loadu_ps(keys + 16 * (i + 1));
      for (int r = 0; r < R; ++r) {
        even[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * d + i]), k0, even[r]);
        odd[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * d + i + 1]), k1, odd[r]);
      }
    }
    if (i < d)
      for (int r = 0; r < R; ++r) even[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * d + i]), _mm512_loadu_ps(keys + 16 * i), even[r]);
    for (int r = 0; r < R; ++r) store_f32(out + r * ld, _mm512_add_ps(even[r], odd[r]), lanes(n));
  }
  // Every row's acc (rows of d) += its probabilities over the block (p: rows ldp apart) times the
  // converted value block [16, d], two rows per value load, 128 columns in registers at a time.
  static void accumulate(const float* p, int64_t ldp, int64_t rows, const float* values, int64_t n, int64_t d,
                         float* acc) {
    in_row_blocks<2>(rows, [&](auto size, int64_t r) {
      accumulate_rows<decltype(size)::value>(p + r * ldp, ldp, values, n, d, acc + r * d);
    });
  }
  template <int R>
  static void accumulate_rows(const float* p, int64_t ldp, const float* values, int64_t n, int64_t d, float* acc) {
    accumulate_in_registers<R>(acc, d, n, [&](int64_t j, int64_t c, __mmask16 m, auto& sum) {
      __m512 weight[R];
      for (int r = 0; r < R; ++r) weight[r] = _mm512_set1_ps(p[r * ldp + j]);
      for (int v = 0; v < columns_of(sum); ++v) {
        const __m512 value = _mm512_castsi512_ps(load_lanes(values + j * d + c + 16 * v, m));
        for (int r = 0; r < R; ++r) sum[r][v] = _mm512_fmadd_ps(weight[r], value, sum[r][v]);
      }
    });
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
