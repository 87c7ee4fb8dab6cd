// The ISA-independent body of the quantiser (kernels_cpu.h: quant_quantize):
// quantize_{scalar,avx2,avx512}.cpp compile it with their level's flags, which is where the
// per-value loops vectorise (16 lanes at AVX-512). They also get -fno-trapping-math (no value
// changes; gcc then vectorises the clamps and the float-to-byte conversion) and
// -ffp-contract=off (no fused multiply-adds), so every level writes the same bytes. The
// arithmetic is python/moeweave/quant/quantize.py's step for step (fp32 division, round half to
// even, the scale rounded to its dtype before use), so round-to-nearest gives the same bytes as
// torch; the clip search sums its errors in another order than torch, so a near-tie may go the
// other way. That file stays the reference and the path for CUDA tensors. Everything here has
// internal linkage, so each ISA file keeps its own copy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "moeweave/half.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

// v [0, k) = one row of w in fp32 (exact for every input dtype).
void load_row(DType dtype, const void* row, int64_t k, float* v) {
  const uint16_t* half = static_cast<const uint16_t*>(row);
  switch (dtype) {
    case DType::bf16: for (int64_t c = 0; c < k; ++c) v[c] = bf16_to_float(half[c]); break;
    case DType::f16: for (int64_t c = 0; c < k; ++c) v[c] = f16_to_float(half[c]); break;
    default: std::memcpy(v, row, k * sizeof(float));
  }
}

// The value a scale takes once stored in `dtype` (torch's .to(dtype).float()).
float rounded_to(DType dtype, float v) {
  switch (dtype) {
    case DType::bf16: return bf16_to_float(float_to_bf16(v));
    case DType::f16: return f16_to_float(float_to_f16(v));
    default: return v;
  }
}

void store_param(DType dtype, void* base, int64_t index, float v) {
  switch (dtype) {
    case DType::bf16: static_cast<uint16_t*>(base)[index] = float_to_bf16(v); break;
    case DType::f16: static_cast<uint16_t*>(base)[index] = float_to_f16(v); break;
    default: static_cast<float*>(base)[index] = v;
  }
}

struct Step {
  float scale, zero;
};

// The stored value of v: clamp(round(v / scale) + zero, 0, top), for top < 2^22. The symmetric
// form clamp(round(v / scale), -2^(b-1), 2^(b-1) - 1) + 2^(b-1) is this one with zero = 2^(b-1)
// (adding a whole offset commutes with clamping whole numbers). The quotient is clamped to
// +-2^22 first, where every result saturates anyway; there adding and subtracting 1.5 * 2^23
// rounds half to even (torch.round) with no branch, so the loops over a group vectorise.
inline float code(float v, Step s, float top) {
  constexpr float kLimit = 4194304.0f, kShift = 12582912.0f;
  const float x = std::min(std::max(v / s.scale, -kLimit), kLimit);
  return std::min(std::max(((x + kShift) - kShift) + s.zero, 0.0f), top);
}

// A group's scale and zero with its range clipped to `ratio` (absmax for symmetric formats,
// [lo, hi] around 0 otherwise).
Step step_at(const QuantizeArgs& f, float absmax, float lo, float hi, float ratio) {
  const int levels = (1 << f.bits) - 1, offset = 1 << (f.bits - 1);
  if (f.sym) {
    float scale = rounded_to(f.scale_dtype, absmax * ratio / float(offset - 1));
    return {scale > 0.0f ? scale : 1.0f, float(offset)};
  }
  const float clipped_lo = lo * ratio, clipped_hi = hi * ratio;
  float scale = rounded_to(f.scale_dtype, (clipped_hi - clipped_lo) / float(levels));
  scale = scale > 0.0f ? scale : 1.0f;
  return {scale, code(-clipped_lo, {scale, 0.0f}, float(levels))};  // clamp(round(-lo / scale), 0, levels)
}

// The squared error of a group's values v [n] stored at step s, in fp32 over 8 running sums.
float squared_error(const float* v, int64_t n, Step s, float top) {
  constexpr int kLanes = 8;
  float sums[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int i = 0; i < kLanes; ++i) {
      const float e = s.scale * (code(v[c + i], s, top) - s.zero) - v[c + i];
      sums[i] += e * e;
    }
  for (; c < n; ++c) {
    const float e = s.scale * (code(v[c], s, top) - s.zero) - v[c];
    sums[0] += e * e;
  }
  float total = 0.0f;
  for (float sum : sums) total += sum;
  return total;
}

// min(v, 0) and max(v, 0) over v [n] (padding is 0, and 0 stays representable), over 8 running
// lanes: one chain of dependent maxima would be bound by its latency.
std::pair<float, float> range(const float* v, int64_t n) {
  constexpr int kLanes = 8;
  float lows[kLanes] = {}, highs[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int i = 0; i < kLanes; ++i) {
      lows[i] = std::min(lows[i], v[c + i]);
      highs[i] = std::max(highs[i], v[c + i]);
    }
  for (; c < n; ++c) lows[0] = std::min(lows[0], v[c]), highs[0] = std::max(highs[0], v[c]);
  return {*std::min_element(lows, lows + kLanes), *std::max_element(highs, highs + kLanes)};
}

// One row's groups: q [cols] (values in [0, 2^bits)) and each group's scale and zero, from the
// row's values v [cols] (zero past column k). With several clip ratios, each group keeps the one
// whose squared error over its valid columns is least.
void quantize_row(const QuantizeArgs& f, const float* v, int64_t k, int64_t cols, uint8_t* q, float* scale,
                  float* zero) {
  const float top = float((1 << f.bits) - 1);
  for (int64_t g = 0; g * f.group < cols; ++g) {
    const int64_t begin = g * f.group, end = begin + f.group, valid_end = std::min(end, k);
    const auto [lo, hi] = range(v + begin, valid_end - begin);
    const float absmax = std::max(-lo, hi);
    Step best = step_at(f, absmax, lo, hi, f.clip_ratios[0]);
    if (f.num_ratios > 1) {
      float best_error = squared_error(v + begin, valid_end - begin, best, top);
      for (int i = 1; i < f.num_ratios; ++i) {
        const Step s = step_at(f, absmax, lo, hi, f.clip_ratios[i]);
        const float error = squared_error(v + begin, valid_end - begin, s, top);
        if (error < best_error) best = s, best_error = error;
      }
    }
    for (int64_t c = begin; c < end; ++c) q[c] = uint8_t(code(v[c], best, top));
    scale[g] = best.scale;
    zero[g] = best.zero;
  }
}

inline uint32_t load_word(const uint8_t* p) {
  uint32_t word;
  std::memcpy(&word, p, 4);
  return word;
}

// Writes one tile's values q [16, cols] into its units (the layout of quant_formats.h, the
// inverse of quant_value). A quad's row is 4 bytes of q, so fields are combined a row word at a
// time: values below 2^field shifted by multiples of `field` never carry into the next byte.
void pack_tile(const uint8_t* q, int64_t cols, int bits, uint8_t* packed) {
  const int field = bits == 3 ? 2 : bits;  // 3 bits: 2-bit fields, then a plane of the high bits
  const int per_chunk = 8 / field;
  const uint32_t mask = bits == 3 ? 0x03030303u : 0xffffffffu;
  for (int64_t u = 0; u * kQuantUnitCols < cols; ++u) {
    const uint8_t* q_unit = q + u * kQuantUnitCols;
    uint8_t* unit = packed + u * quant_unit_bytes(bits);
    for (int chunk = 0; chunk < kQuantQuadsPerUnit / per_chunk; ++chunk)
      for (int r = 0; r < kQuantTileRows; ++r) {
        uint32_t word = 0;
        for (int i = 0; i < per_chunk; ++i)
          word |= (load_word(q_unit + r * cols + (chunk * per_chunk + i) * 4) & mask) << (field * i);
        std::memcpy(unit + chunk * kQuantQuadBytes + r * 4, &word, 4);
      }
    if (bits != 3) continue;
    // Bit p = 4r + c of quad j's 64-bit word is bit 2 of row r, column c: byte r / 2 holds rows r
    // (low nibble) and r + 1 (high nibble) of an even r.
    uint8_t* plane = unit + kQuantQuadsPerUnit / per_chunk * kQuantQuadBytes;
    for (int quad = 0; quad < kQuantQuadsPerUnit; ++quad)
      for (int r = 0; r < kQuantTileRows; r += 2) {
        uint8_t byte = 0;
        for (int c = 0; c < 4; ++c) {
          byte |= uint8_t(((q_unit[r * cols + quad * 4 + c] >> 2) & 1) << c);
          byte |= uint8_t(((q_unit[(r + 1) * cols + quad * 4 + c] >> 2) & 1) << (4 + c));
        }
        plane[quad * 8 + r / 2] = byte;
      }
  }
}

// Tiles [tile_begin, tile_end) of the weight: its rows' groups quantised, then packed.
void quantize_tiles(const QuantizeArgs& f, int64_t tile_begin, int64_t tile_end) {
  const int64_t cols = quant_padded(f.k, f.group), groups = cols / f.group;
  const int64_t tile_bytes = cols / kQuantUnitCols * quant_unit_bytes(f.bits);
  const size_t w_bytes = dtype_size(f.w_dtype);
  std::vector<float> v(cols, 0.0f), scale(groups), zero(groups);
  std::vector<uint8_t> q(kQuantTileRows * cols);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    for (int r = 0; r < kQuantTileRows; ++r) {
      const int64_t row = t * kQuantTileRows + r;
      uint8_t* q_row = q.data() + r * cols;
      if (row < f.n) {
        load_row(f.w_dtype, static_cast<const char*>(f.w) + row * f.ldw * w_bytes, f.k, v.data());
        quantize_row(f, v.data(), f.k, cols, q_row, scale.data(), zero.data());
      } else {  // padding rows: q 0, scale 1, zero 0
        std::fill(q_row, q_row + cols, uint8_t(0));
        std::fill(scale.begin(), scale.end(), 1.0f);
        std::fill(zero.begin(), zero.end(), 0.0f);
      }
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t index = (t * groups + g) * kQuantTileRows + r;
        store_param(f.scale_dtype, f.scales, index, scale[g]);
        if (!f.sym) store_param(f.scale_dtype, f.zeros, index, zero[g]);
      }
    }
    pack_tile(q.data(), cols, f.bits, f.packed + t * tile_bytes);
  }
}

}  // namespace
}  // namespace moeweave::cpu
