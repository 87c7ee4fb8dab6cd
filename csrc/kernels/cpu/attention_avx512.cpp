// AVX-512 attention: 16-lane fp32 dot products and value accumulation (masked for the last
// lanes), vector exp for the softmax; the loop structure is attention_rows.h.
#include "attention_rows.h"
#include "simd_avx512.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

using namespace avx512;

inline __m512 load_row(DType dtype, const char* row, int64_t i, __mmask16 m) {
  switch (dtype) {
    case DType::bf16: return load_bf16(reinterpret_cast<const uint16_t*>(row) + i, m);
    case DType::f16: return load_f16(reinterpret_cast<const uint16_t*>(row) + i, m);
    default: return load_f32(reinterpret_cast<const float*>(row) + i, m);
  }
}

struct Avx512Ops {
  static float dot(DType dtype, const float* q, const char* row, int64_t d) {
    __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= d; i += 32) {
      even = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load_row(dtype, row, i, 0xffff), even);
      odd = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), load_row(dtype, row, i + 16, 0xffff), odd);
    }
    for (; i < d; i += 16) {
      const __mmask16 m = lanes(d - i);
      even = _mm512_fmadd_ps(load_f32(q + i, m), load_row(dtype, row, i, m), even);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(even, odd));
  }
  static void axpy(DType dtype, float p, const char* row, float* acc, int64_t d) {
    const __m512 scale = _mm512_set1_ps(p);
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 m = lanes(d - i);
      store_f32(acc + i, _mm512_fmadd_ps(scale, load_row(dtype, row, i, m), load_f32(acc + i, m)), m);
    }
  }
  static void exp_shifted(float* x, int64_t n, float shift) {
    const __m512 s = _mm512_set1_ps(shift);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = lanes(n - i);
      store_f32(x + i, exp_ps(_mm512_sub_ps(load_f32(x + i, m), s)), m);
    }
  }
};

}  // namespace

const AttentionKernel kAttentionAvx512 = attention_rows<Avx512Ops>;

}  // namespace moeweave::cpu
