// AVX-512 rerouting: a row's K expert ids are range-checked and looked up with one masked compare
// and one masked gather per 16 slots.
#include "simd_avx512.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

int64_t reroute_avx512(const int32_t* topk_ids, const int32_t* tok_adapter, const int32_t* remap,
                       int32_t* out, int64_t t_begin, int64_t t_end, int64_t K, int64_t A,
                       int64_t E) {
  const __m512i num_experts = _mm512_set1_epi32(static_cast<int32_t>(E));
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int32_t adapter = tok_adapter[t];
    if (adapter < -1 || adapter >= A) return t * K;
    const int32_t* row = remap + (int64_t(adapter) + 1) * E;
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 m = avx512::lanes(K - k);
      const __m512i ids = _mm512_maskz_loadu_epi32(m, topk_ids + t * K + k);
      // Unsigned compare: a negative id becomes huge and fails the same test as id >= E.
      const __mmask16 in_range = _mm512_mask_cmplt_epu32_mask(m, ids, num_experts);
      if (in_range != m) return t * K + k + __builtin_ctz(unsigned(m & ~in_range));
      const __m512i phys = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, ids, row, 4);
      _mm512_mask_storeu_epi32(out + t * K + k, m, phys);
    }
  }
  return -1;
}

}  // namespace

const RerouteKernel kRerouteAvx512 = reroute_avx512;

}  // namespace moeweave::cpu
