// AVX-512 silu_mul: 16 lanes per step, the ragged end handled by the same code under a lane mask.
#include "simd_avx512.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

using namespace avx512;

template <typename T, __m512 (*load)(const T*, __mmask16), void (*store)(T*, __m512, __mmask16)>
void silu_mul_avx512(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lanes(n - i);
    store(out + i, _mm512_mul_ps(silu_ps(load(gate + i, m)), load(up + i, m)), m);
  }
}

}  // namespace

const SiluMulKernels kSiluMulAvx512 = {
    silu_mul_avx512<float, load_f32, store_f32>,
    silu_mul_avx512<uint16_t, load_f16, store_f16>,
    silu_mul_avx512<uint16_t, load_bf16, store_bf16>,
};

}  // namespace moeweave::cpu
