// CRC-32C by carry-less multiplication (AVX-512 VPCLMULQDQ), for when verification must keep up
// with a disk: the crc32 instruction tops out at 8 bytes per cycle, folding does several times
// that. The message is folded, 256 bytes per step, into four 512-bit accumulators; those are
// folded into one 128-bit value congruent to the whole message modulo the CRC polynomial P, whose
// CRC the crc32 instruction then finishes.
//
// Folding, in polynomial terms: a 128-bit value X = H x^64 + L (H: its first 8 bytes in message
// order) that lies D bits before the data it is folded onto contributes X x^D, and
// X x^D == H (x^(D+64) mod P) + L (x^D mod P)  (mod P), two 64x32-bit carry-less products. In
// the bit-reflected layout CRC-32C uses, a carry-less product carries an extra factor x, so the
// constants are x^(D+63) and x^(D-1) mod P, bit-reflected. The initial CRC is XORed into the
// first 4 bytes, which is what a CRC register's initial value amounts to.
// Compiled with AVX-512 + VPCLMULQDQ + SSE4.2 flags only here; the dispatcher checks CPUID.
#include <immintrin.h>

#include <cstring>

#include "crc32c.h"

namespace moeweave::io {

namespace {

// x^n mod P in the normal (unreflected) bit order; P = x^32 + 0x1EDC6F41.
uint32_t x_pow_mod(unsigned n) {
  uint64_t v = 1;
  for (unsigned i = 0; i < n; ++i) {
    v <<= 1;
    if (v & (1ull << 32)) v ^= 0x11EDC6F41ull;
  }
  return static_cast<uint32_t>(v);
}

uint64_t reflected(uint32_t k) {  // bit-reflect a degree < 32 constant into a 64-bit operand
  uint32_t r = 0;
  for (int i = 0; i < 32; ++i) r |= ((k >> i) & 1u) << (31 - i);
  return static_cast<uint64_t>(r) << 32;
}

// The pair of constants that fold a 128-bit lane forward by `bits`: low qword multiplies the
// lane's low qword (H), high qword its high qword (L).
__m128i fold_constants(unsigned bits) {
  return _mm_set_epi64x(static_cast<long long>(reflected(x_pow_mod(bits - 1))),
                        static_cast<long long>(reflected(x_pow_mod(bits + 63))));
}

struct Constants {
  __m512i by_2048;  // one accumulator onto the same one 256 bytes later
  __m512i by_512;   // one 512-bit accumulator onto the next
  __m128i lane[3];  // lane i of the last accumulator onto lane 3: (3 - i) * 128 bits
};

Constants make_constants() {
  Constants c;
  c.by_2048 = _mm512_broadcast_i32x4(fold_constants(2048));
  c.by_512 = _mm512_broadcast_i32x4(fold_constants(512));
  for (int i = 0; i < 3; ++i) c.lane[i] = fold_constants(static_cast<unsigned>((3 - i) * 128));
  return c;
}

inline __m512i fold(__m512i x, __m512i k, __m512i onto) {
  const __m512i h = _mm512_clmulepi64_epi128(x, k, 0x00);
  const __m512i l = _mm512_clmulepi64_epi128(x, k, 0x11);
  return _mm512_ternarylogic_epi64(h, l, onto, 0x96);  // h ^ l ^ onto
}

inline __m128i fold128(__m128i x, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

}  // namespace

uint32_t crc32c_raw_avx512(uint32_t crc, const uint8_t* data, uint64_t length) {
  if (length < 256) return crc32c_raw_sse42(crc, data, length);
  static const Constants k = make_constants();
  __m512i acc[4];
  for (int i = 0; i < 4; ++i) acc[i] = _mm512_loadu_si512(data + 64 * i);
  acc[0] = _mm512_xor_si512(acc[0], _mm512_castsi128_si512(_mm_cvtsi32_si128(static_cast<int>(crc))));
  data += 256;
  length -= 256;
  for (; length >= 256; data += 256, length -= 256)
    for (int i = 0; i < 4; ++i) acc[i] = fold(acc[i], k.by_2048, _mm512_loadu_si512(data + 64 * i));
  __m512i x = fold(acc[0], k.by_512, acc[1]);
  x = fold(x, k.by_512, acc[2]);
  x = fold(x, k.by_512, acc[3]);
  __m128i lane = _mm512_extracti32x4_epi32(x, 3);
  lane = _mm_xor_si128(lane, fold128(_mm512_extracti32x4_epi32(x, 0), k.lane[0]));
  lane = _mm_xor_si128(lane, fold128(_mm512_extracti32x4_epi32(x, 1), k.lane[1]));
  lane = _mm_xor_si128(lane, fold128(_mm512_extracti32x4_epi32(x, 2), k.lane[2]));
  uint8_t bytes[16];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(bytes), lane);
  return crc32c_raw_sse42(crc32c_raw_sse42(0, bytes, 16), data, length);
}

}  // namespace moeweave::io
