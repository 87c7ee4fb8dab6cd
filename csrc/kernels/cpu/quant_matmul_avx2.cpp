// AVX2 quantised matmul: the AVX-512 kernel's scheme at half width. A 256-bit register holds 8
// rows x 4 columns, so a tile is done as two halves of 8 rows, each reading its 32-byte half of
// every 64-byte quad. Without VNNI the dot product is maddubs (u8 x s8 -> s16 pairs) + madd
// (-> s32); 2/3/4-bit values are small enough that the s16 pairs never saturate. 8-bit values
// could, so they are re-centred to signed (q - 128) and multiplied as |w| * sign(x, w).
#include <algorithm>
#include <cstring>

#include "moeweave/half.h"
#include "simd_avx2.h"
#include "quant_transposed.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

using namespace avx2;

// Prefetch distance of each tile stream, as in the AVX-512 kernel.
constexpr int kPrefetchBytes = 2048;

inline __m256i fours_where_set(uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(int(bits)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i select = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
  const __m256i hit = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
  return _mm256_and_si256(hit, _mm256_set1_epi8(4));
}

template <int BITS, typename F>
inline void for_each_quad(const uint8_t* unit, int half, F&& fn) {
  auto load = [&](int chunk) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit + 64 * chunk + 32 * half));
  };
  if constexpr (BITS == 8) {
    for (int j = 0; j < 8; ++j) fn(j, load(j));
  } else if constexpr (BITS == 4) {
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    for (int c = 0; c < 4; ++c) {
      const __m256i v = load(c);
      fn(2 * c, _mm256_and_si256(v, nibble));
      fn(2 * c + 1, _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble));
    }
  } else {
    const __m256i two = _mm256_set1_epi8(3);
    for (int c = 0; c < 2; ++c) {
      const __m256i v = load(c);
      for (int i = 0; i < 4; ++i) {
        __m256i q = _mm256_and_si256(_mm256_srli_epi16(v, 2 * i), two);
        if constexpr (BITS == 3) {
          uint32_t high;
          std::memcpy(&high, unit + 128 + 8 * (4 * c + i) + 4 * half, 4);
          q = _mm256_or_si256(q, fours_where_set(high));
        }
        fn(4 * c + i, q);
      }
    }
  }
}

template <int BITS>
inline __m256i dot_add(__m256i acc, __m256i q, __m256i x4) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (BITS == 8) {
    const __m256i centred = _mm256_xor_si256(q, _mm256_set1_epi8(char(0x80)));
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(centred), _mm256_sign_epi8(x4, centred));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
  } else {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(q, x4), ones));
  }
}

inline __m256 load_scales(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::bf16: return load_bf16(static_cast<const uint16_t*>(base) + index);
    case DType::f16: return load_f16(static_cast<const uint16_t*>(base) + index);
    default: return _mm256_loadu_ps(static_cast<const float*>(base) + index);
  }
}

template <int BITS, int MB>
void half_tile(const QuantMatrix& w, const QuantActs& a, int64_t t, int half, int64_t i0, float* y, int64_t ldy) {
  const int64_t kp = quant_padded(w.k, w.group_size), groups = kp / w.group_size;
  const int64_t units = kp / kQuantUnitCols, act_units = a.stride / kQuantUnitCols;
  const int64_t units_per_group = w.group_size / kQuantUnitCols;
  constexpr int kUnitBytes = quant_unit_bytes(BITS);
  // 8-bit dots come out as sum (q - 128) x, so the zero point moves by 128 to match.
  constexpr float kDotBias = BITS == 8 ? 128.0f : 0.0f;
  const uint8_t* unit = w.packed + t * units * kUnitBytes;
  __m256 acc[MB];
  for (int b = 0; b < MB; ++b) acc[b] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256 inner[MB];
    float zterm[MB];
    for (int b = 0; b < MB; ++b) inner[b] = _mm256_setzero_ps(), zterm[b] = 0.0f;
    for (int64_t u = g * units_per_group; u < (g + 1) * units_per_group; ++u, unit += kUnitBytes) {
      __m256i dot[MB];
      for (int b = 0; b < MB; ++b) dot[b] = _mm256_setzero_si256();
      if (half == 0)  // the second half reads the same lines again, from cache
        for (int line = 0; line < kUnitBytes; line += 64)
          _mm_prefetch(reinterpret_cast<const char*>(unit) + kPrefetchBytes + line, _MM_HINT_T0);
      for_each_quad<BITS>(unit, half, [&](int j, __m256i q) {
        for (int b = 0; b < MB; ++b) {
          int32_t x4;
          std::memcpy(&x4, a.q + (i0 + b) * a.stride + u * kQuantUnitCols + 4 * j, 4);
          dot[b] = dot_add<BITS>(dot[b], q, _mm256_set1_epi32(x4));
        }
      });
      for (int b = 0; b < MB; ++b) {
        const float sx = a.scale[(i0 + b) * act_units + u];
        inner[b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[b]), _mm256_set1_ps(sx), inner[b]);
        zterm[b] += sx * float(a.sum[(i0 + b) * act_units + u]);
      }
    }
    const int64_t sbase = (t * groups + g) * kQuantTileRows + 8 * half;
    const __m256 scale = load_scales(w.scales, w.scale_dtype, sbase);
    const __m256 zero = _mm256_sub_ps(
        w.zeros ? load_scales(w.zeros, w.scale_dtype, sbase) : _mm256_set1_ps(float(1 << (BITS - 1))),
        _mm256_set1_ps(kDotBias));
    for (int b = 0; b < MB; ++b)
      acc[b] = _mm256_fmadd_ps(scale, _mm256_fnmadd_ps(zero, _mm256_set1_ps(zterm[b]), inner[b]), acc[b]);
  }
  const int64_t live = w.n - t * kQuantTileRows - 8 * half;
  const __m256i rows = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(live < 8 ? live : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int b = 0; b < MB; ++b)
    _mm256_maskstore_ps(y + (i0 + b) * ldy + t * kQuantTileRows + 8 * half, rows, acc[b]);
}

template <int BITS>
void tiles(const QuantMatrix& w, const QuantActs& a, int64_t tile_begin, int64_t tile_end, float* y,
           int64_t ldy) {
  const int64_t block = a.row_block();
  for (int64_t first = 0; first < a.m; first += block) {
    const int64_t last = std::min(a.m, first + block);
    for (int64_t t = tile_begin; t < tile_end; ++t)
      for (int half = 0; half < 2 && w.n - t * kQuantTileRows - 8 * half > 0; ++half)
        for (int64_t i0 = first; i0 < last; i0 += 4) switch (last - i0) {
            case 1: half_tile<BITS, 1>(w, a, t, half, i0, y, ldy); break;
            case 2: half_tile<BITS, 2>(w, a, t, half, i0, y, ldy); break;
            case 3: half_tile<BITS, 3>(w, a, t, half, i0, y, ldy); break;
            default: half_tile<BITS, 4>(w, a, t, half, i0, y, ldy); break;
          }
  }
}

void quant_avx2(const QuantMatrix& w, const QuantActs& a, int64_t tile_begin, int64_t tile_end, float* y,
                int64_t ldy) {
  switch (w.bits) {
    case 2: return tiles<2>(w, a, tile_begin, tile_end, y, ldy);
    case 3: return tiles<3>(w, a, tile_begin, tile_end, y, ldy);
    case 4: return tiles<4>(w, a, tile_begin, tile_end, y, ldy);
    default: return tiles<8>(w, a, tile_begin, tile_end, y, ldy);
  }
}

inline float reduce_add(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

void bf16_avx2(const uint16_t* w, int64_t k, const float* x, int64_t m, int64_t row_begin, int64_t row_end,
               float* y, int64_t ldy) {
  for (int64_t r = row_begin; r < row_end; ++r)
    for (int64_t i = 0; i < m; ++i) {
      __m256 acc = _mm256_setzero_ps();
      int64_t c = 0;
      for (; c + 8 <= k; c += 8) acc = _mm256_fmadd_ps(load_bf16(w + r * k + c), _mm256_loadu_ps(x + i * k + c), acc);
      float sum = reduce_add(acc);
      for (; c < k; ++c) sum += bf16_to_float(w[r * k + c]) * x[i * k + c];
      y[i * ldy + r] = sum;
    }
}

}  // namespace

const QuantMatmulKernels kQuantMatmulAvx2 = {quant_avx2, bf16_avx2, quantize_rows_scalar,
                                              transposed_product, dequantize_scalar};

}  // namespace moeweave::cpu
