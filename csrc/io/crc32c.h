// The three CRC-32C implementations behind moeweave::crc32c (declared in moeweave/io.h), exposed
// so the native tests can hold them against each other. Both compute the raw register update:
// no pre- or post-inversion, which crc32c() adds.
#pragma once

#include <cstdint>

namespace moeweave::io {

// Slicing-by-8 tables; runs on any CPU.
uint32_t crc32c_raw_scalar(uint32_t crc, const uint8_t* data, uint64_t length);

// SSE4.2 crc32 instruction over three interleaved streams (compiled with -msse4.2 in its own
// translation unit; call only where the CPU has SSE4.2).
uint32_t crc32c_raw_sse42(uint32_t crc, const uint8_t* data, uint64_t length);

// Carry-less-multiply folding with AVX-512 VPCLMULQDQ (its own TU with those flags; call only
// where the CPU has AVX-512F, VPCLMULQDQ and SSE4.2).
uint32_t crc32c_raw_avx512(uint32_t crc, const uint8_t* data, uint64_t length);

}  // namespace moeweave::io
