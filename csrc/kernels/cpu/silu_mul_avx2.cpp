// AVX2 silu_mul: 8 lanes per step; the last n % 8 elements go through the scalar element code.
#include "scalar_math.h"
#include "simd_avx2.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

using namespace avx2;

template <typename T, __m256 (*load)(const T*), void (*store)(T*, __m256),
          void (*tail)(const T*, const T*, T*, int64_t)>
void silu_mul_avx2(const T* gate, const T* up, T* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store(out + i, _mm256_mul_ps(silu_ps(load(gate + i)), load(up + i)));
  tail(gate + i, up + i, out + i, n - i);
}

}  // namespace

const SiluMulKernels kSiluMulAvx2 = {
    silu_mul_avx2<float, load_f32, store_f32, silu_mul_f32_tail>,
    silu_mul_avx2<uint16_t, load_f16, store_f16, silu_mul_f16_tail>,
    silu_mul_avx2<uint16_t, load_bf16, store_bf16, silu_mul_bf16_tail>,
};

}  // namespace moeweave::cpu
