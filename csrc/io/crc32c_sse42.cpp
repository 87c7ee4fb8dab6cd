// CRC-32C with the SSE4.2 crc32 instruction. One instruction has a 3-cycle latency but a
// 1-cycle throughput, so one dependent chain runs at a third of the unit's speed; this file runs
// three chains over three consecutive blocks and joins them. Joining uses linearity over GF(2):
// raw(x, D) = shift(x) ^ raw(0, D), where shift(x) = raw(x, |D| zero bytes) is a linear map of
// the 32-bit register, applied through four 256-entry tables (one per register byte).
// Compiled with -msse4.2 only here (see CMakeLists.txt); the dispatcher calls it after CPUID.
#include <nmmintrin.h>

#include <array>
#include <cstring>

#include "crc32c.h"

namespace moeweave::io {

namespace {

constexpr uint64_t kBlock = 8192;  // bytes per chain per round: long enough to amortise a join

uint32_t chain(uint32_t crc, const uint8_t* data, uint64_t length) {
  uint64_t c = crc;
  for (; length >= 8; data += 8, length -= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);
    c = _mm_crc32_u64(c, word);
  }
  for (; length > 0; ++data, --length) c = _mm_crc32_u8(static_cast<uint32_t>(c), *data);
  return static_cast<uint32_t>(c);
}

// shift(x) for kBlock zero bytes, tabulated per register byte.
using ShiftTables = std::array<std::array<uint32_t, 256>, 4>;

ShiftTables make_shift_tables() {
  static const uint8_t zeros[kBlock] = {};
  std::array<uint32_t, 32> basis;  // shift of each single register bit
  for (int bit = 0; bit < 32; ++bit) basis[bit] = chain(1u << bit, zeros, kBlock);
  ShiftTables t{};
  for (int byte = 0; byte < 4; ++byte)
    for (uint32_t v = 0; v < 256; ++v) {
      uint32_t sum = 0;
      for (int bit = 0; bit < 8; ++bit)
        if (v & (1u << bit)) sum ^= basis[byte * 8 + bit];
      t[byte][v] = sum;
    }
  return t;
}

uint32_t shift(const ShiftTables& t, uint32_t x) {
  return t[0][x & 0xFF] ^ t[1][(x >> 8) & 0xFF] ^ t[2][(x >> 16) & 0xFF] ^ t[3][x >> 24];
}

}  // namespace

uint32_t crc32c_raw_sse42(uint32_t crc, const uint8_t* data, uint64_t length) {
  static const ShiftTables tables = make_shift_tables();
  for (; length >= 3 * kBlock; data += 3 * kBlock, length -= 3 * kBlock) {
    uint64_t c0 = crc, c1 = 0, c2 = 0;
    for (uint64_t i = 0; i < kBlock; i += 8) {
      uint64_t w0, w1, w2;
      std::memcpy(&w0, data + i, 8);
      std::memcpy(&w1, data + kBlock + i, 8);
      std::memcpy(&w2, data + 2 * kBlock + i, 8);
      c0 = _mm_crc32_u64(c0, w0);
      c1 = _mm_crc32_u64(c1, w1);
      c2 = _mm_crc32_u64(c2, w2);
    }
    crc = shift(tables, shift(tables, static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1)) ^
          static_cast<uint32_t>(c2);
  }
  return chain(crc, data, length);
}

}  // namespace moeweave::io
