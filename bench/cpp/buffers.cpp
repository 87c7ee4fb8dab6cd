// Random buffers and packed weight sets (buffers.h).
#include "buffers.h"

#include <algorithm>
#include <cstring>

#include "moeweave/half.h"
#include "triad.h"

namespace moeweave::bench {
namespace {

constexpr int64_t kAlignment = 4096;
constexpr int64_t kGroupSize = 64;

// splitmix64: fast enough to fill hundreds of MiB at start-up, and statistically plenty here.
uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int64_t align_up(int64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

struct Layout {
  int64_t packed_bytes, scale_count;  // packed values [n/16, k/32, unit bytes], scales [n/16, k/64, 16]
};

Layout layout(int64_t n, int64_t k, int bits) {
  if (bits == 16) return {n * k * 2, 0};
  const int64_t tiles = quant_padded(n, kQuantTileRows) / kQuantTileRows, kp = quant_padded(k, kGroupSize);
  return {tiles * (kp / kQuantUnitCols) * quant_unit_bytes(bits), tiles * (kp / kGroupSize) * kQuantTileRows};
}

}  // namespace

Buffer aligned_buffer(int64_t bytes) {
  return Buffer(static_cast<uint8_t*>(std::aligned_alloc(kAlignment, align_up(std::max<int64_t>(bytes, 1)))));
}

void fill_random_bytes(void* data, int64_t bytes, uint64_t seed) {
  uint8_t* out = static_cast<uint8_t*>(data);
  for (int64_t i = 0; i < bytes; i += 8) {
    const uint64_t word = next_random(seed);
    std::memcpy(out + i, &word, std::min<int64_t>(8, bytes - i));
  }
}

void fill_random_bf16(uint16_t* data, int64_t n, float range, uint64_t seed) {
  for (int64_t i = 0; i < n; ++i) {
    const float unit = float(next_random(seed) >> 40) * 0x1p-24f;  // [0, 1)
    data[i] = float_to_bf16((2.0f * unit - 1.0f) * range);
  }
}

int64_t copies_beyond_llc(int64_t bytes_each) {
  return std::max<int64_t>(1, (4 * last_level_cache_bytes() + bytes_each - 1) / bytes_each);
}

Slabs make_slabs(int64_t bytes, int64_t copies) {
  const int64_t stride = align_up(bytes);
  return {aligned_buffer(stride * copies), stride, copies};
}

void replicate(const Slabs& slabs) {
  for (int64_t i = 1; i < slabs.copies; ++i) std::memcpy(slabs.slab(i), slabs.slab(0), slabs.stride);
}

int64_t weight_bytes(int64_t n, int64_t k, int bits) {
  const Layout l = layout(n, k, bits);
  return l.packed_bytes + 2 * l.scale_count;
}

WeightSet weight_set(int64_t n, int64_t k, int bits, int64_t count) {
  const Layout l = layout(n, k, bits);
  WeightSet set{{}, weight_bytes(n, k, bits), make_slabs(weight_bytes(n, k, bits), count)};
  uint8_t* slab = set.slabs.slab(0);
  if (bits == 16) {
    fill_random_bf16(reinterpret_cast<uint16_t*>(slab), n * k, 1.0f, 1);
  } else {
    fill_random_bytes(slab, l.packed_bytes, 1);
    fill_random_bf16(reinterpret_cast<uint16_t*>(slab + l.packed_bytes), l.scale_count, 0.01f, 2);
  }
  replicate(set.slabs);
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t* packed = set.slabs.slab(i);
    set.matrices.push_back({packed, bits == 16 ? nullptr : packed + l.packed_bytes, nullptr, n, k, bits,
                            bits == 16 ? 0 : int32_t(kGroupSize), DType::bf16});
  }
  return set;
}

}  // namespace moeweave::bench
