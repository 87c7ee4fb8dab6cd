// The ISA-independent body of Bone's block-affine kernels (kernels_cpu.h: bone_bat_form and
// bone_bat_block_grad). bone_{scalar,avx2,avx512}.cpp each define kVecBytes (their register width)
// and include this file, compiled with only their own ISA flags; Vec is GCC's generic vector of
// that width. An accumulator tile of kTile vectors stays in registers while the r-long reduction
// streams past it, and each loaded row of B (or of G) feeds kTile multiply-adds.
// Everything here has internal linkage, so each ISA file keeps its own copy.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "element_types.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

constexpr int64_t kLanes = kVecBytes / sizeof(float);
constexpr int64_t kTile = 8;  // accumulator vectors: blocks of one W' row, or rows of dB
using Vec = float __attribute__((vector_size(kVecBytes)));

inline Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

using Bits = uint32_t __attribute__((vector_size(kVecBytes)));
using HalfBits = uint16_t __attribute__((vector_size(kVecBytes / 2)));

// kLanes floats from/to a row of E: fp32 copies, bf16 shifts and rounds in vector registers
// (half.h's rounding, NaNs quieted), f16 one element at a time.
template <typename E>
Vec load_lanes(const typename E::T* src) {
  Vec v;
  for (int64_t l = 0; l < kLanes; ++l) v[l] = E::load(src[l]);
  return v;
}

template <>
Vec load_lanes<F32>(const float* src) {
  return load_vec(src);
}

template <>
Vec load_lanes<BF16>(const uint16_t* src) {
  HalfBits h;
  std::memcpy(&h, src, sizeof h);
  const Bits u = __builtin_convertvector(h, Bits) << 16;
  Vec v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

template <typename E>
void store_lanes(Vec v, typename E::T* dst) {
  for (int64_t l = 0; l < kLanes; ++l) dst[l] = E::store(v[l]);
}

template <>
void store_lanes<F32>(Vec v, float* dst) {
  std::memcpy(dst, &v, sizeof v);
}

template <>
void store_lanes<BF16>(Vec v, uint16_t* dst) {
  Bits u;
  std::memcpy(&u, &v, sizeof u);
  const Bits rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const Bits quiet_nan = (u >> 16) | 0x40u;
  const HalfBits h = __builtin_convertvector((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded, HalfBits);
  std::memcpy(dst, &h, sizeof h);
}

template <typename E>
void load_row(const typename E::T* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec v = load_lanes<E>(src + i);
    std::memcpy(dst + i, &v, sizeof v);
  }
  for (; i < n; ++i) dst[i] = E::load(src[i]);
}

// Blocks j < Tile of one W' row (at w, r apart), columns [a0, a0 + kLanes) of each:
// out[j r + a] = w[j r + a] + bc[a] + sum_k w[j r + k] b[k, a]  (b = B_i [r, r], bc = B_i[c, :]).
template <typename E, int64_t Tile>
void form_lanes(const float* w, const float* b, const float* bc, int64_t r, int64_t a0, typename E::T* out) {
  Vec acc[Tile];
  const Vec c = load_vec(bc + a0);
  for (int64_t j = 0; j < Tile; ++j) acc[j] = load_vec(w + j * r + a0) + c;
  for (int64_t k = 0; k < r; ++k) {
    const Vec bk = load_vec(b + k * r + a0);
    for (int64_t j = 0; j < Tile; ++j) acc[j] += w[j * r + k] * bk;
  }
  for (int64_t j = 0; j < Tile; ++j) store_lanes<E>(acc[j], out + j * r + a0);
}

// As form_lanes for the one column a of each block (the last r % kLanes columns).
template <typename E, int64_t Tile>
void form_column(const float* w, const float* b, const float* bc, int64_t r, int64_t a, typename E::T* out) {
  for (int64_t j = 0; j < Tile; ++j) {
    float acc = w[j * r + a] + bc[a];
    for (int64_t k = 0; k < r; ++k) acc += w[j * r + k] * b[k * r + a];
    out[j * r + a] = E::store(acc);
  }
}

template <typename E, int64_t Tile>
void form_blocks(const float* w, const float* b, const float* bc, int64_t r, typename E::T* out) {
  int64_t a0 = 0;
  for (; a0 + kLanes <= r; a0 += kLanes) form_lanes<E, Tile>(w, b, bc, r, a0, out);
  for (; a0 < r; ++a0) form_column<E, Tile>(w, b, bc, r, a0, out);
}

template <typename E>
void form_rows(const void* w_any, int64_t ldw, const float* block, int64_t r, int64_t cols,
               int64_t n_begin, int64_t n_end, void* out_any, int64_t ldo) {
  using T = typename E::T;
  const T* w = static_cast<const T*>(w_any);
  T* out = static_cast<T*>(out_any);
  std::vector<float> row(cols);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const float* b = block + (n / r) * r * r;  // B_i, i = n / r
    const float* bc = b + (n % r) * r;         // B_i[c, :], c = n % r
    load_row<E>(w + n * ldw, cols, row.data());
    T* out_row = out + n * ldo;
    int64_t j0 = 0;
    for (; j0 + kTile * r <= cols; j0 += kTile * r) form_blocks<E, kTile>(row.data() + j0, b, bc, r, out_row + j0);
    for (; j0 < cols; j0 += r) form_blocks<E, 1>(row.data() + j0, b, bc, r, out_row + j0);
  }
}

// Rows [p0, p0 + Tile) and columns [a0, a0 + kLanes) of dB_i += sum over blocks j of
// W[c, j r + p] G[c, j r + a], for one row c of the block row (w, g: that row, `cols` long).
// One row of W and of G (2 cols floats) stays in L1 while every tile of dB_i passes over it.
template <int64_t Tile>
void grad_lanes(const float* w, const float* g, int64_t r, int64_t cols, int64_t p0, int64_t a0, float* db) {
  Vec acc[Tile];
  for (int64_t p = 0; p < Tile; ++p) acc[p] = load_vec(db + (p0 + p) * r + a0);
  for (int64_t j0 = 0; j0 < cols; j0 += r) {
    const Vec gr = load_vec(g + j0 + a0);
    for (int64_t p = 0; p < Tile; ++p) acc[p] += w[j0 + p0 + p] * gr;
  }
  for (int64_t p = 0; p < Tile; ++p) std::memcpy(db + (p0 + p) * r + a0, &acc[p], sizeof(Vec));
}

// As grad_lanes for the one column a (the last r % kLanes columns).
template <int64_t Tile>
void grad_column(const float* w, const float* g, int64_t r, int64_t cols, int64_t p0, int64_t a, float* db) {
  for (int64_t p = 0; p < Tile; ++p)
    for (int64_t j0 = 0; j0 < cols; j0 += r) db[(p0 + p) * r + a] += w[j0 + p0 + p] * g[j0 + a];
}

template <int64_t Tile>
void grad_rows(const float* w, const float* g, int64_t r, int64_t cols, int64_t p0, float* db) {
  int64_t a0 = 0;
  for (; a0 + kLanes <= r; a0 += kLanes) grad_lanes<Tile>(w, g, r, cols, p0, a0, db);
  for (; a0 < r; ++a0) grad_column<Tile>(w, g, r, cols, p0, a0, db);
}

template <typename E>
void block_grad_rows(const void* w_any, int64_t ldw, const void* g_any, int64_t ldg, int64_t r, int64_t cols,
                     int64_t i_begin, int64_t i_end, float* dblock) {
  using T = typename E::T;
  std::vector<float> w(cols), g(cols);  // one row of W and of G, as fp32
  for (int64_t i = i_begin; i < i_end; ++i) {
    float* db = dblock + i * r * r;
    std::fill(db, db + r * r, 0.0f);
    for (int64_t c = 0; c < r; ++c) {
      load_row<E>(static_cast<const T*>(w_any) + (i * r + c) * ldw, cols, w.data());
      load_row<E>(static_cast<const T*>(g_any) + (i * r + c) * ldg, cols, g.data());
      int64_t p0 = 0;
      for (; p0 + kTile <= r; p0 += kTile) grad_rows<kTile>(w.data(), g.data(), r, cols, p0, db);
      for (; p0 < r; ++p0) grad_rows<1>(w.data(), g.data(), r, cols, p0, db);
      // The identity of (W_ij + I): dB_i[c, a] += sum_j G_ij[c, a].
      for (int64_t j0 = 0; j0 < cols; j0 += r)
        for (int64_t a = 0; a < r; ++a) db[c * r + a] += g[j0 + a];
    }
  }
}

template <typename E>
constexpr BoneKernels bone_kernels_for() {
  return {form_rows<E>, block_grad_rows<E>};
}

// The table of one ISA level: entries per element type, in DType order f32, f16, bf16.
constexpr BoneKernelsByType bone_kernels() {
  return {bone_kernels_for<F32>(), bone_kernels_for<F16>(), bone_kernels_for<BF16>()};
}

}  // namespace
}  // namespace moeweave::cpu
