// fp16/bf16 conversions: every 16-bit pattern survives a round trip, and float -> half rounds to
// the nearest representable value (checked against the neighbours computed in double).
#include <cmath>
#include <cstdint>
#include <random>

#include "check.h"
#include "moeweave/half.h"

using namespace moeweave;

TEST(half_round_trip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f16 = f16_to_float(uint16_t(h));
    if (std::isnan(f16))
      CHECK(std::isnan(f16_to_float(float_to_f16(f16))));
    else
      CHECK(float_to_f16(f16) == h);
    const float b16 = bf16_to_float(uint16_t(h));
    if (std::isnan(b16))
      CHECK(std::isnan(bf16_to_float(float_to_bf16(b16))));
    else
      CHECK(float_to_bf16(b16) == h);
  }
}

// The chosen half must be at least as close to x as both neighbouring encodings; beyond the
// largest finite half (65504, rounding boundary 65520) IEEE rounding gives infinity.
TEST(half_matches_float_math) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> exponent(-26.0f, 17.0f);
  for (int i = 0; i < 200000; ++i) {
    const float x = std::ldexp(1.0f + (rng() % 100000) / 100000.0f, int(exponent(rng))) * ((i & 1) ? 1 : -1);
    const uint16_t h = float_to_f16(x);
    if (std::fabs(x) >= 65520.0f) CHECK((h & 0x7fff) == 0x7c00);
    const double err = std::fabs(double(f16_to_float(h)) - x);
    for (int d : {-1, 1}) {
      const uint16_t n = uint16_t(h + d);
      if ((h & 0x7fff) == 0x7c00 || (n & 0x7c00) == 0x7c00 || ((n ^ h) & 0x8000)) continue;
      CHECK(err <= std::fabs(double(f16_to_float(n)) - x));
    }
    const uint16_t b = float_to_bf16(x);
    const double berr = std::fabs(double(bf16_to_float(b)) - x);
    for (int d : {-1, 1}) {
      const uint16_t n = uint16_t(b + d);
      if ((n & 0x7f80) == 0x7f80 || ((n ^ b) & 0x8000)) continue;
      CHECK(berr <= std::fabs(double(bf16_to_float(n)) - x));
    }
  }
}
