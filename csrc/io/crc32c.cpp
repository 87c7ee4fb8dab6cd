// CRC-32C for the store's extent checksums: the portable slicing-by-8 variant and the dispatch
// to the SSE4.2 (crc32c_sse42.cpp) and AVX-512 VPCLMULQDQ (crc32c_avx512.cpp) variants. Slicing-by-8 folds 8 input bytes per step through 8
// tables of 256 entries (table k advances a byte by k further zero bytes), ~1 byte/cycle; the
// SSE4.2 path is about 8x faster, the folding path faster still, which is what keeps
// verification a small share of a read.
#include <array>

#include "crc32c.h"
#include "moeweave/io.h"
#include "moeweave/isa.h"

namespace moeweave::io {

namespace {

constexpr uint32_t kPolynomial = 0x82F63B78u;  // Castagnoli, bit-reflected

using Tables = std::array<std::array<uint32_t, 256>, 8>;

Tables make_tables() {
  Tables t{};
  for (uint32_t v = 0; v < 256; ++v) {
    uint32_t c = v;
    for (int bit = 0; bit < 8; ++bit) c = (c >> 1) ^ (kPolynomial & (0u - (c & 1u)));
    t[0][v] = c;
  }
  for (int k = 1; k < 8; ++k)
    for (uint32_t v = 0; v < 256; ++v) t[k][v] = (t[k - 1][v] >> 8) ^ t[0][t[k - 1][v] & 0xFF];
  return t;
}

}  // namespace

uint32_t crc32c_raw_scalar(uint32_t crc, const uint8_t* data, uint64_t length) {
  static const Tables t = make_tables();
  for (; length >= 8; data += 8, length -= 8) {
    const uint32_t lo = crc ^ (uint32_t(data[0]) | uint32_t(data[1]) << 8 | uint32_t(data[2]) << 16 |
                               uint32_t(data[3]) << 24);
    crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^ t[3][data[4]] ^
          t[2][data[5]] ^ t[1][data[6]] ^ t[0][data[7]];
  }
  for (; length > 0; ++data, --length) crc = (crc >> 8) ^ t[0][(crc ^ *data) & 0xFF];
  return crc;
}

}  // namespace moeweave::io

namespace moeweave {

uint32_t crc32c(uint32_t crc, const void* data, uint64_t length) {
  // The choice follows the kernels' ISA level, so MOEWEAVE_ISA=scalar / avx2 test the table and
  // SSE4.2 paths on a machine that has the AVX-512 one.
  static const bool has_sse42 = __builtin_cpu_supports("sse4.2");
  static const bool has_vpclmul = has_sse42 && __builtin_cpu_supports("vpclmulqdq");
  const auto* bytes = static_cast<const uint8_t*>(data);
  const Isa isa = current_isa();
  if (isa == Isa::avx512 && has_vpclmul) return ~io::crc32c_raw_avx512(~crc, bytes, length);
  if (isa != Isa::scalar && has_sse42) return ~io::crc32c_raw_sse42(~crc, bytes, length);
  return ~io::crc32c_raw_scalar(~crc, bytes, length);
}

}  // namespace moeweave
