// AVX-512 attention with AVX512-BF16 pair products over a bf16 cache. Compiled with
// the AVX-512 flags and -mavx512bf16; attention.cpp calls it only where the CPU has the extension.
#include "attention_avx512_ops.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

// Attention over a bf16 cache on CPUs with AVX512-BF16: one vdpbf16ps multiplies 32 bf16 pairs
// and adds them to 16 fp32 sums, twice the multiply-adds of an fp32 FMA. A key block is
// transposed once into pairs by key (lane j = key j), and each query row then takes one pair
// product per pair of its elements, with no reduction across lanes. The query and the cache are
// bf16 already, so the scores are the same products summed in another order; the probabilities
// are rounded to bf16 for the value sums (the output is rounded to bf16 anyway). A decode step
// gains too: the cache is read as stored, never converted (one query row per item included).
struct Avx512Bf16Ops : Avx512Ops {
  static constexpr bool kPairs = true;

  // The first min(count, 32) bf16 lanes of a register.
  static __mmask32 bf16_lanes(int64_t count) { return count >= 32 ? ~__mmask32(0) : _cvtu32_mask32((1u << count) - 1); }

  // Keys 0 .. n - 1 of a block (rows row_bytes apart) as pairs by key: out[16 i + j] =
  // (k[j, 2i], k[j, 2i + 1]), zeros for keys j >= n and past column d.
  static void pair_keys(const char* keys, int64_t row_bytes, int64_t n, int64_t d, uint32_t* out) {
    for (int64_t c = 0; c < d; c += 32) {
      const __mmask32 m = bf16_lanes(d - c);
      __m512i r[16];
      for (int j = 0; j < 16; ++j)
        r[j] = j < n ? _mm512_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(keys + j * row_bytes) + c)
                     : _mm512_setzero_si512();
      transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(out + (c / 2 + i) * 16, r[i]);
    }
  }

  // R query rows (q: `pairs` words each) over a block from pair_keys: out[r * ld + j] for j < n.
  // Even and odd pairs go to separate sums, 2R independent chains of vdpbf16ps.
  template <int R>
  static void score_rows(const uint32_t* q, int64_t pairs, const uint32_t* keys, int64_t n, float scale, float* out,
                         int64_t ld) {
    __m512 even[R], odd[R];
    for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= pairs; i += 2) {
      const __m512bh k0 = (__m512bh)_mm512_loadu_si512(keys + 16 * i);
      const __m512bh k1 = (__m512bh)_mm512_loadu_si512(keys + 16 * (i + 1));
      for (int r = 0; r < R; ++r) {
        even[r] = _mm512_dpbf16_ps(even[r], (__m512bh)_mm512_set1_epi32(int(q[r * pairs + i])), k0);
        odd[r] = _mm512_dpbf16_ps(odd[r], (__m512bh)_mm512_set1_epi32(int(q[r * pairs + i + 1])), k1);
      }
    }
    if (i < pairs) {
      const __m512bh k0 = (__m512bh)_mm512_loadu_si512(keys + 16 * i);
      for (int r = 0; r < R; ++r)
        even[r] = _mm512_dpbf16_ps(even[r], (__m512bh)_mm512_set1_epi32(int(q[r * pairs + i])), k0);
    }
    for (int r = 0; r < R; ++r)
      store_f32(out + r * ld, _mm512_mul_ps(_mm512_add_ps(even[r], odd[r]), _mm512_set1_ps(scale)), lanes(n));
  }

  // Every query row of an item (rows of (d + 1) / 2 words, the last padded with 0) over a block:
  // out[r * ld + j] = scale sum_i q[r, i] k[j, i] for j < n.
  static void pair_scores(const uint32_t* q, int64_t rows, int64_t d, const uint32_t* keys, int64_t n, float scale,
                          float* out, int64_t ld) {
    const int64_t pairs = (d + 1) / 2;
    in_row_blocks<8>(rows, [&](auto size, int64_t r) {
      score_rows<decltype(size)::value>(q + r * pairs, pairs, keys, n, scale, out + r * ld, ld);
    });
  }

  // Value rows 2i and 2i + 1 interleaved word by word, 32 columns at a time.
  static void pair_block(const char* cache, int64_t row_bytes, const uint8_t* visible, int64_t t0, int64_t n,
                         int64_t d, uint32_t* block) {
    prefetch_ahead(cache, row_bytes, t0, n, d * 2);
    const __m512i low = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                         37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i high = _mm512_add_epi16(low, _mm512_set1_epi16(16));
    auto row = [&](int64_t t) {
      return t < n && visible[t] ? reinterpret_cast<const uint16_t*>(cache + (t0 + t) * row_bytes) : nullptr;
    };
    for (int64_t i = 0; i < kKeyBlock / 2; ++i) {
      const uint16_t *even = row(2 * i), *odd = row(2 * i + 1);
      for (int64_t c = 0; c < d; c += 32) {
        const __mmask32 m = bf16_lanes(d - c);
        const __m512i a = even ? _mm512_maskz_loadu_epi16(m, even + c) : _mm512_setzero_si512();
        const __m512i b = odd ? _mm512_maskz_loadu_epi16(m, odd + c) : _mm512_setzero_si512();
        uint32_t* out = block + i * d + c;
        _mm512_mask_storeu_epi32(out, lanes(d - c), _mm512_permutex2var_epi16(a, low, b));
        if (d - c > 16) _mm512_mask_storeu_epi32(out + 16, lanes(d - c - 16), _mm512_permutex2var_epi16(a, high, b));
      }
    }
  }

  // R rows' acc[0, d) += their bf16 probabilities (p, rows ldp apart) times the block's value
  // pairs; each value load feeds R products, 128 columns of every row in registers at a time.
  template <int R>
  static void accumulate_rows(const float* p, int64_t ldp, const uint32_t* block, int64_t n, int64_t d, float* acc) {
    alignas(32) uint32_t weights[R][kKeyBlock / 2];  // (p[2i], p[2i + 1]) as bf16
    for (int r = 0; r < R; ++r)
      _mm256_store_si256(reinterpret_cast<__m256i*>(weights[r]),
                         (__m256i)_mm512_cvtneps_pbh(load_f32(p + r * ldp, lanes(n))));
    accumulate_in_registers<R>(acc, d, (n + 1) / 2, [&](int64_t i, int64_t c, __mmask16 m, auto& sum) {
      __m512bh weight[R];
      for (int r = 0; r < R; ++r) weight[r] = (__m512bh)_mm512_set1_epi32(int(weights[r][i]));
      for (int v = 0; v < columns_of(sum); ++v) {
        const __m512bh values = (__m512bh)load_lanes(block + i * d + c + 16 * v, m);
        for (int r = 0; r < R; ++r) sum[r][v] = _mm512_dpbf16_ps(sum[r][v], weight[r], values);
      }
    });
  }

  // Every row's acc (rows of d) += its probabilities over the block (p: rows ldp apart) times
  // the values in pair_block's layout, two rows at a time.
  static void accumulate_pairs(const float* p, int64_t ldp, int64_t rows, const uint32_t* block, int64_t n, int64_t d,
                               float* acc) {
    in_row_blocks<2>(rows, [&](auto size, int64_t r) {
      accumulate_rows<decltype(size)::value>(p + r * ldp, ldp, block, n, d, acc + r * d);
    });
  }
};

}  // namespace

const AttentionKernel kAttentionAvx512Bf16 = attention_items<Avx512Bf16Ops>;

}  // namespace moeweave::cpu
