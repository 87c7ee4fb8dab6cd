// AVX-512 VNNI quantised matmul. A tile's 16 rows live in the 16 int32 lanes of one register, so
// a quad of packed bytes times 4 broadcast activation bytes is one vpdpbusd and no horizontal
// reduction is ever needed: unpack (an and or a shift per quad), dot, and once per 32-column
// unit a convert + FMA with the activation scale; once per group the weight scales and zeros.
// Up to 4 activation rows share each unpacked quad (MB) and two tiles each broadcast activation
// word (NT), which is what makes prefill cheap.
#include <algorithm>
#include <cstring>
#include <vector>

#include "simd_avx512.h"
#include "quant_transposed.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

using namespace avx512;

// Each stream prefetches the unit this far ahead of the one it computes on. The hardware
// prefetchers alone leave a core short of reads in flight on the short streams of an MoE layer
// (the fused op on a Qwen3-30B-A3B layer at T = 1: 670-683 us without, 580-593 us at 2 KiB;
// 512 B and 4 KiB were slower), and a prefetch past a matrix's end is harmless.
constexpr int kPrefetchBytes = 2048;
// The bf16 GEMV streams whole rows: 4 KiB ahead is 1.06-1.10x no prefetch for 768-32000 rows
// of 2048 (alternating runs; 1-2 KiB were between the two).
constexpr int kBf16PrefetchBytes = 4096;

// Quad j (0..7) of a packed unit, unpacked to one byte per value. The unit's 64-byte lines are
// reloaded per quad; they are in L1, and the loads fold into the and/shift.
template <int BITS>
inline __m512i quad(const uint8_t* unit, int j) {
  if constexpr (BITS == 8) {
    return _mm512_loadu_si512(unit + 64 * j);
  } else if constexpr (BITS == 4) {
    const __m512i v = _mm512_loadu_si512(unit + 64 * (j / 2));
    return _mm512_and_si512(j % 2 ? _mm512_srli_epi16(v, 4) : v, _mm512_set1_epi8(0x0f));
  } else {
    // 2 bits, or the low 2 bits of 3-bit values whose third bit arrives as a byte mask.
    const __m512i v = _mm512_loadu_si512(unit + 64 * (j / 4));
    __m512i q = _mm512_and_si512(_mm512_srli_epi16(v, 2 * (j % 4)), _mm512_set1_epi8(3));
    if constexpr (BITS == 3) {
      uint64_t high;
      std::memcpy(&high, unit + 128 + 8 * j, 8);
      q = _mm512_mask_add_epi8(q, _cvtu64_mask64(high), q, _mm512_set1_epi8(4));
    }
    return q;
  }
}

inline __m512 load_scales(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::bf16: return load_bf16(static_cast<const uint16_t*>(base) + index, 0xffff);
    case DType::f16: return load_f16(static_cast<const uint16_t*>(base) + index, 0xffff);
    default: return _mm512_loadu_ps(static_cast<const float*>(base) + index);
  }
}

// Rows i0 .. i0 + MB - 1 of y for the NT tiles t[0..NT). Each broadcast activation word feeds NT
// tiles and each unpacked quad MB rows, which keeps loads below the dot products' rate. With one
// row, the NT tiles come from far apart in memory instead: several sequential streams per core
// keep enough reads in flight to reach DRAM bandwidth, one does not.
template <int BITS, int MB, int NT>
void tile(const QuantMatrix& w, const QuantActs& a, const int64_t* t, int64_t i0, float* y, int64_t ldy) {
  const int64_t kp = quant_padded(w.k, w.group_size), groups = kp / w.group_size;
  const int64_t units = kp / kQuantUnitCols, act_units = a.stride / kQuantUnitCols;
  const int64_t units_per_group = w.group_size / kQuantUnitCols;
  constexpr int kUnitBytes = quant_unit_bytes(BITS);
  // vpdpbusd has a latency of several cycles: consecutive quads rotate over kChains sets of
  // accumulators, so that about 8 independent dot products are in flight.
  constexpr int kChains = NT * MB >= 8 ? 1 : NT * MB >= 4 ? 2 : 4;
  const uint8_t* unit[NT];
  for (int n = 0; n < NT; ++n) unit[n] = w.packed + t[n] * units * kUnitBytes;
  const __m512 implied_zero = _mm512_set1_ps(float(1 << (BITS - 1)));
  __m512 acc[NT][MB];
  for (int n = 0; n < NT; ++n)
    for (int b = 0; b < MB; ++b) acc[n][b] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 inner[NT][MB];
    float zterm[MB];
    for (int b = 0; b < MB; ++b) {
      zterm[b] = 0.0f;
      for (int n = 0; n < NT; ++n) inner[n][b] = _mm512_setzero_ps();
    }
    for (int64_t u = g * units_per_group; u < (g + 1) * units_per_group; ++u) {
      __m512i dot[kChains][NT][MB];
      for (int c = 0; c < kChains; ++c)
        for (int n = 0; n < NT; ++n)
          for (int b = 0; b < MB; ++b) dot[c][n][b] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int j = 0; j < kQuantQuadsPerUnit; ++j) {
        __m512i q[NT];
        for (int n = 0; n < NT; ++n) q[n] = quad<BITS>(unit[n], j);
        for (int b = 0; b < MB; ++b) {
          int32_t x4;
          std::memcpy(&x4, a.q + (i0 + b) * a.stride + u * kQuantUnitCols + 4 * j, 4);
          const __m512i xb = _mm512_set1_epi32(x4);
          for (int n = 0; n < NT; ++n) dot[j % kChains][n][b] = _mm512_dpbusd_epi32(dot[j % kChains][n][b], q[n], xb);
        }
      }
      for (int n = 0; n < NT; ++n) {
        for (int line = 0; line < kUnitBytes; line += 64)
          _mm_prefetch(reinterpret_cast<const char*>(unit[n]) + kPrefetchBytes + line, _MM_HINT_T0);
        unit[n] += kUnitBytes;
      }
      for (int b = 0; b < MB; ++b) {
        const float sx = a.scale[(i0 + b) * act_units + u];
        zterm[b] += sx * float(a.sum[(i0 + b) * act_units + u]);
        for (int n = 0; n < NT; ++n) {
          __m512i total = dot[0][n][b];
          for (int c = 1; c < kChains; ++c) total = _mm512_add_epi32(total, dot[c][n][b]);
          inner[n][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_set1_ps(sx), inner[n][b]);
        }
      }
    }
    for (int n = 0; n < NT; ++n) {
      const int64_t sbase = (t[n] * groups + g) * kQuantTileRows;
      const __m512 scale = load_scales(w.scales, w.scale_dtype, sbase);
      const __m512 zero = w.zeros ? load_scales(w.zeros, w.scale_dtype, sbase) : implied_zero;
      for (int b = 0; b < MB; ++b)
        acc[n][b] = _mm512_fmadd_ps(scale, _mm512_fnmadd_ps(zero, _mm512_set1_ps(zterm[b]), inner[n][b]), acc[n][b]);
    }
  }
  for (int n = 0; n < NT; ++n) {
    const __mmask16 rows = lanes(w.n - t[n] * kQuantTileRows);
    for (int b = 0; b < MB; ++b) _mm512_mask_storeu_ps(y + (i0 + b) * ldy + t[n] * kQuantTileRows, rows, acc[n][b]);
  }
}

// tile<BITS, MB, NT> with MB = min(rows, 4).
template <int BITS, int NT>
void tile_rows(int64_t rows, const QuantMatrix& w, const QuantActs& a, const int64_t* t, int64_t i0, float* y,
               int64_t ldy) {
  switch (rows) {
    case 1: return tile<BITS, 1, NT>(w, a, t, i0, y, ldy);
    case 2: return tile<BITS, 2, NT>(w, a, t, i0, y, ldy);
    case 3: return tile<BITS, 3, NT>(w, a, t, i0, y, ldy);
    default: return tile<BITS, 4, NT>(w, a, t, i0, y, ldy);
  }
}

// Up to 4 activation rows (decode; an expert's few tokens) pair tile i of the range with tile
// i + half: two streams far apart. Adjacent tiles (one tile row, 16-32 KiB, apart) streamed
// 15-20 % slower from DRAM at 2-4 rows of INT4 (2816 x 2048, 2 threads, alternating runs).
// More rows pair adjacent tiles and walk them in blocks of 4 rows (each broadcast activation
// word used twice), a.row_block() rows at a time.
template <int BITS>
void tiles(const QuantMatrix& w, const QuantActs& a, int64_t tile_begin, int64_t tile_end, float* y,
           int64_t ldy) {
  if (a.m <= 4) {
    const int64_t count = tile_end - tile_begin, half = (count + 1) / 2;
    for (int64_t i = 0; i < count / 2; ++i) {
      const int64_t pair[2] = {tile_begin + i, tile_begin + half + i};
      tile_rows<BITS, 2>(a.m, w, a, pair, 0, y, ldy);
    }
    const int64_t middle = tile_begin + count / 2;
    if (count % 2) tile_rows<BITS, 1>(a.m, w, a, &middle, 0, y, ldy);
    return;
  }
  const int64_t block = a.row_block();
  for (int64_t first = 0; first < a.m; first += block) {
    const int64_t last = std::min(a.m, first + block);
    for (int64_t t = tile_begin; t < tile_end; t += 2) {
      const int64_t pair[2] = {t, t + 1};
      for (int64_t i0 = first; i0 < last; i0 += 4) {
        if (t + 1 < tile_end)
          tile_rows<BITS, 2>(last - i0, w, a, pair, i0, y, ldy);
        else
          tile_rows<BITS, 1>(last - i0, w, a, pair, i0, y, ldy);
      }
    }
  }
}

void quant_avx512(const QuantMatrix& w, const QuantActs& a, int64_t tile_begin, int64_t tile_end,
                  float* y, int64_t ldy) {
  switch (w.bits) {
    case 2: return tiles<2>(w, a, tile_begin, tile_end, y, ldy);
    case 3: return tiles<3>(w, a, tile_begin, tile_end, y, ldy);
    case 4: return tiles<4>(w, a, tile_begin, tile_end, y, ldy);
    default: return tiles<8>(w, a, tile_begin, tile_end, y, ldy);
  }
}

template <int MB>
void bf16_rows(const uint16_t* w, int64_t k, const float* x, int64_t i0, int64_t r, float* y, int64_t ldy) {
  __m512 acc[MB];
  for (int b = 0; b < MB; ++b) acc[b] = _mm512_setzero_ps();
  for (int64_t c = 0; c < k; c += 16) {
    const __mmask16 m = lanes(k - c);
    const __m512 wv = load_bf16(w + r * k + c, m);
    if (c % 32 == 0) _mm_prefetch(reinterpret_cast<const char*>(w + r * k + c) + kBf16PrefetchBytes, _MM_HINT_T0);
    for (int b = 0; b < MB; ++b) acc[b] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + (i0 + b) * k + c), acc[b]);
  }
  for (int b = 0; b < MB; ++b) y[(i0 + b) * ldy + r] = _mm512_reduce_add_ps(acc[b]);
}

void bf16_avx512(const uint16_t* w, int64_t k, const float* x, int64_t m, int64_t row_begin,
                 int64_t row_end, float* y, int64_t ldy) {
  for (int64_t r = row_begin; r < row_end; ++r)
    for (int64_t i0 = 0; i0 < m; i0 += 4) switch (m - i0) {
        case 1: bf16_rows<1>(w, k, x, i0, r, y, ldy); break;
        case 2: bf16_rows<2>(w, k, x, i0, r, y, ldy); break;
        case 3: bf16_rows<3>(w, k, x, i0, r, y, ldy); break;
        default: bf16_rows<4>(w, k, x, i0, r, y, ldy); break;
      }
}

// Two 16-lane halves per 32-column unit; cvtps_epi32 rounds to nearest even like nearbyint in
// the scalar variant, so both produce the same bytes.
void quantize_rows_avx512(DType dtype, const void* x, int64_t rows, int64_t k, int64_t ldx, int64_t stride,
                          int8_t* q, float* scale, int32_t* sum) {
  const int64_t units = stride / kQuantUnitCols;
  const __m512 sign_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t u = 0; u < units; ++u) {
      __m512 half[2];
      for (int h = 0; h < 2; ++h) {
        const int64_t col = u * kQuantUnitCols + 16 * h;
        const __mmask16 m = col < k ? lanes(k - col) : __mmask16(0);
        half[h] = dtype == DType::bf16 ? load_bf16(static_cast<const uint16_t*>(x) + i * ldx + col, m)
                                       : load_f32(static_cast<const float*>(x) + i * ldx + col, m);
      }
      const float amax = _mm512_reduce_max_ps(
          _mm512_max_ps(_mm512_and_ps(half[0], sign_mask), _mm512_and_ps(half[1], sign_mask)));
      const __m512 inverse = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
      __m512i total = _mm512_setzero_si512();
      for (int h = 0; h < 2; ++h) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(half[h], inverse));
        v = _mm512_max_epi32(_mm512_min_epi32(v, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
        total = _mm512_add_epi32(total, v);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i * stride + u * kQuantUnitCols + 16 * h),
                         _mm512_cvtepi32_epi8(v));
      }
      scale[i * units + u] = amax / 127.0f;
      sum[i * units + u] = _mm512_reduce_add_epi32(total);
    }
}

// The transposed product dx = dy W (variants.h: transposed) for packed matrices. Per unit, the
// column panel of every tile is unpacked once to floats q in the packed order (quad j, row r,
// column c of the quad: lane r % 4 * 4 + c of register r / 4), scales and zeros stay out of it:
//   dx[i, c] = sum_r a_r q[r, c] - sum_r a_r zero_r,   a_r = dy[i, r] scale_r.
// A register of four a_r, each repeated over its 4 lanes, times a panel register is 16 useful
// FMAs; 8 accumulators per dy row (one per quad) are reduced over their 4 row lanes at the end.
// The panel is walked in blocks of tiles that stay in L1 while every dy row passes over them
// (streaming the whole panel from L2 per row block made the product L2-bound), with the
// accumulators parked in memory between blocks. bf16 matrices take the portable path
// (quant_transposed.h).
constexpr int64_t kPanelBlockTiles = 16;  // 16 tiles x 2 KiB = 32 KiB of panel

template <int BITS>
void unpack_panel(const QuantMatrix& w, int64_t u, float* panel) {
  const int64_t units = quant_padded(w.k, w.group_size) / kQuantUnitCols, unit_bytes = quant_unit_bytes(BITS);
  for (int64_t t = 0; t * kQuantTileRows < w.n; ++t) {
    const uint8_t* unit = w.packed + (t * units + u) * unit_bytes;
    for (int j = 0; j < kQuantQuadsPerUnit; ++j) {
      const __m512i q = quad<BITS>(unit, j);
      float* out = panel + (t * kQuantQuadsPerUnit + j) * kQuantQuadBytes;
      _mm512_storeu_ps(out, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_castsi512_si128(q))));
      _mm512_storeu_ps(out + 16, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(q, 1))));
      _mm512_storeu_ps(out + 32, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(q, 2))));
      _mm512_storeu_ps(out + 48, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(q, 3))));
    }
  }
}

// MB dy rows over tiles [t_begin, t_end) of unit u's panel. acc holds each row's 8 quad
// accumulators and then its zero term ([MB][9][16] floats, carried between tile blocks). The
// spread registers of a_r are formed one q at a time, so MB = 3 rows fit in the 32 registers:
// 24 accumulators, 3 spread a, 1 panel value; each panel load feeds MB FMAs.
template <int MB>
void panel_rows(const QuantMatrix& w, int64_t u, const float* panel, int64_t t_begin, int64_t t_end,
                const float* dy, int64_t ldy, float* acc_memory) {
  constexpr int kAccs = kQuantQuadsPerUnit + 1;
  const int64_t groups = quant_padded(w.k, w.group_size) / w.group_size, g = u * kQuantUnitCols / w.group_size;
  const __m512 implied_zero = _mm512_set1_ps(float(1 << (w.bits - 1)));
  const __m512i quarter = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  __m512 acc[MB][kAccs];  // [row][quad j], then [row][8] = the zero term
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < kAccs; ++j) acc[i][j] = _mm512_loadu_ps(acc_memory + (i * kAccs + j) * 16);
  for (int64_t t = t_begin; t < t_end; ++t) {
    const __mmask16 rows = lanes(w.n - t * kQuantTileRows);
    const int64_t sbase = (t * groups + g) * kQuantTileRows;
    const __m512 scale = load_scales(w.scales, w.scale_dtype, sbase);
    const __m512 zero = w.zeros ? load_scales(w.zeros, w.scale_dtype, sbase) : implied_zero;
    __m512 scaled[MB];
    for (int i = 0; i < MB; ++i) {
      scaled[i] = _mm512_mul_ps(load_f32(dy + i * ldy + t * kQuantTileRows, rows), scale);
      acc[i][kQuantQuadsPerUnit] = _mm512_fmadd_ps(scaled[i], zero, acc[i][kQuantQuadsPerUnit]);
    }
    const float* p = panel + t * kQuantQuadsPerUnit * kQuantQuadBytes;
    for (int q = 0; q < 4; ++q) {
      // lane l reads a_{4q + l / 4}: the rows of panel register q of every quad
      const __m512i spread = _mm512_add_epi32(quarter, _mm512_set1_epi32(4 * q));
      __m512 a[MB];
      for (int i = 0; i < MB; ++i) a[i] = _mm512_permutexvar_ps(spread, scaled[i]);
      for (int j = 0; j < kQuantQuadsPerUnit; ++j) {
        const __m512 values = _mm512_loadu_ps(p + j * kQuantQuadBytes + q * 16);
        for (int i = 0; i < MB; ++i) acc[i][j] = _mm512_fmadd_ps(a[i], values, acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < kAccs; ++j) _mm512_storeu_ps(acc_memory + (i * kAccs + j) * 16, acc[i][j]);
}

// dx row i, columns of unit u, from its accumulators: each quad's 4 row lanes summed, minus the zero term.
void finish_row(const float* acc_memory, int64_t c0, int cols, float* dx_row, bool accumulate) {
  constexpr int kAccs = kQuantQuadsPerUnit + 1;
  const __m128 zero_term = _mm_set1_ps(_mm512_reduce_add_ps(_mm512_loadu_ps(acc_memory + (kAccs - 1) * 16)));
  alignas(64) float row[kQuantUnitCols];
  for (int j = 0; j < kQuantQuadsPerUnit; ++j) {
    const __m512 sum = _mm512_loadu_ps(acc_memory + j * 16);
    const __m256 halves = _mm256_add_ps(_mm512_castps512_ps256(sum), _mm512_extractf32x8_ps(sum, 1));
    const __m128 quarters = _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps(halves, 1));
    _mm_store_ps(row + 4 * j, _mm_sub_ps(quarters, zero_term));
  }
  float* out = dx_row + c0;
  for (int c = 0; c < cols; ++c) out[c] = accumulate ? out[c] + row[c] : row[c];
}

void transposed_avx512(const QuantMatrix& w, const float* dy, int64_t m, int64_t ldy, int64_t unit_begin,
                       int64_t unit_end, float* dx, int64_t ldx, bool accumulate) {
  if (w.bits == 16) {
    transposed_product(w, dy, m, ldy, unit_begin, unit_end, dx, ldx, accumulate);
    return;
  }
  constexpr int64_t kRowFloats = (kQuantQuadsPerUnit + 1) * 16;
  const int64_t tiles = quant_padded(w.n, kQuantTileRows) / kQuantTileRows;
  std::vector<float> panel(tiles * kQuantTileRows * kQuantUnitCols), acc(m * kRowFloats);
  for (int64_t u = unit_begin; u < unit_end; ++u) {
    switch (w.bits) {
      case 2: unpack_panel<2>(w, u, panel.data()); break;
      case 3: unpack_panel<3>(w, u, panel.data()); break;
      case 4: unpack_panel<4>(w, u, panel.data()); break;
      default: unpack_panel<8>(w, u, panel.data());
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t t = 0; t < tiles; t += kPanelBlockTiles) {
      const int64_t t_end = std::min(tiles, t + kPanelBlockTiles);
      int64_t i = 0;
      for (; i + 3 <= m; i += 3) panel_rows<3>(w, u, panel.data(), t, t_end, dy + i * ldy, ldy, &acc[i * kRowFloats]);
      for (; i < m; ++i) panel_rows<1>(w, u, panel.data(), t, t_end, dy + i * ldy, ldy, &acc[i * kRowFloats]);
    }
    const int64_t c0 = u * kQuantUnitCols;
    const int cols = int(w.k - c0 < kQuantUnitCols ? w.k - c0 : kQuantUnitCols);
    for (int64_t i = 0; i < m; ++i) finish_row(&acc[i * kRowFloats], c0, cols, dx + i * ldx, accumulate);
  }
}

// dequantize (variants.h). Quad j holds 4 columns of all 16 rows (dword r = row r), so a unit's
// 8 quads are transposed in registers: two rounds of unpacks leave, in 128-bit lane l of
// rows[a] (and of rows[4 + a]), columns 0-15 (16-31) of row 4l + a in order. Each row is then
// widened to floats, (q - zero) * scale as the scalar kernel computes it, rounded to bf16.
// (A gather instead ran 15x slower: Intel's gather-sampling mitigation makes vpgatherdd slow.)
template <int LANE>
void dequantize_lane(const __m512i (&rows)[8], int count, const float* scales, const float* zeros, uint16_t* out,
                     int64_t ldo, __mmask16 low, __mmask16 high) {
  for (int a = 0; a < count; ++a) {
    const int r = 4 * LANE + a;
    const __m512 scale = _mm512_set1_ps(scales[r]), zero = _mm512_set1_ps(zeros[r]);
    const __m512 q_low = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(rows[a], LANE)));
    store_bf16(out + a * ldo, _mm512_mul_ps(scale, _mm512_sub_ps(q_low, zero)), low);
    if (!high) continue;
    const __m512 q_high = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(rows[4 + a], LANE)));
    store_bf16(out + a * ldo + 16, _mm512_mul_ps(scale, _mm512_sub_ps(q_high, zero)), high);
  }
}

template <int BITS>
void dequantize_tiles(const QuantMatrix& w, int64_t tile_begin, int64_t tile_end, uint16_t* out, int64_t ldo) {
  const int64_t kp = quant_padded(w.k, w.group_size), groups = kp / w.group_size, units = kp / kQuantUnitCols;
  const int64_t real_units = quant_padded(w.k, kQuantUnitCols) / kQuantUnitCols;  // the rest is padding
  constexpr int kUnitBytes = quant_unit_bytes(BITS);
  const __m512 implied_zero = _mm512_set1_ps(float(1 << (BITS - 1)));
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int rows_in_tile = int(std::min<int64_t>(kQuantTileRows, w.n - t * kQuantTileRows));
    int count[4];  // rows of the tile in each 128-bit lane
    for (int lane = 0; lane < 4; ++lane) count[lane] = std::clamp(rows_in_tile - 4 * lane, 0, 4);
    uint16_t* tile_out = out + (t - tile_begin) * kQuantTileRows * ldo;
    for (int64_t u = 0; u < real_units; ++u) {
      const uint8_t* unit = w.packed + (t * units + u) * kUnitBytes;
      __m512i q[kQuantQuadsPerUnit], pairs[kQuantQuadsPerUnit], rows[kQuantQuadsPerUnit];
      for (int j = 0; j < kQuantQuadsPerUnit; ++j) q[j] = quad<BITS>(unit, j);
      for (int p = 0; p < 4; ++p) {
        pairs[2 * p] = _mm512_unpacklo_epi32(q[2 * p], q[2 * p + 1]);
        pairs[2 * p + 1] = _mm512_unpackhi_epi32(q[2 * p], q[2 * p + 1]);
      }
      for (int half = 0; half < 2; ++half) {
        const __m512i* in = pairs + 4 * half;
        rows[4 * half] = _mm512_unpacklo_epi64(in[0], in[2]);
        rows[4 * half + 1] = _mm512_unpackhi_epi64(in[0], in[2]);
        rows[4 * half + 2] = _mm512_unpacklo_epi64(in[1], in[3]);
        rows[4 * half + 3] = _mm512_unpackhi_epi64(in[1], in[3]);
      }
      const int64_t c0 = u * kQuantUnitCols, sbase = (t * groups + c0 / w.group_size) * kQuantTileRows;
      const int64_t columns = w.k - c0;  // of this unit's 32, those inside the matrix
      const __mmask16 low = lanes(columns), high = columns > 16 ? lanes(columns - 16) : __mmask16(0);
      alignas(64) float scales[kQuantTileRows], zeros[kQuantTileRows];
      _mm512_store_ps(scales, load_scales(w.scales, w.scale_dtype, sbase));
      _mm512_store_ps(zeros, w.zeros ? load_scales(w.zeros, w.scale_dtype, sbase) : implied_zero);
      uint16_t* o = tile_out + c0;
      dequantize_lane<0>(rows, count[0], scales, zeros, o, ldo, low, high);
      dequantize_lane<1>(rows, count[1], scales, zeros, o + 4 * ldo, ldo, low, high);
      dequantize_lane<2>(rows, count[2], scales, zeros, o + 8 * ldo, ldo, low, high);
      dequantize_lane<3>(rows, count[3], scales, zeros, o + 12 * ldo, ldo, low, high);
    }
  }
}

void dequantize_avx512(const QuantMatrix& w, int64_t tile_begin, int64_t tile_end, uint16_t* out, int64_t ldo) {
  switch (w.bits) {
    case 2: return dequantize_tiles<2>(w, tile_begin, tile_end, out, ldo);
    case 3: return dequantize_tiles<3>(w, tile_begin, tile_end, out, ldo);
    case 4: return dequantize_tiles<4>(w, tile_begin, tile_end, out, ldo);
    default: return dequantize_tiles<8>(w, tile_begin, tile_end, out, ldo);
  }
}

}  // namespace

const QuantMatmulKernels kQuantMatmulAvx512 = {quant_avx512, bf16_avx512, quantize_rows_avx512,
                                              transposed_avx512, dequantize_avx512};

}  // namespace moeweave::cpu
