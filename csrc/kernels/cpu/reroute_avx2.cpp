// AVX2 rerouting: per row, 8 slots at a time, a masked load, a range test and a masked gather.
#include "simd_avx2.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

int64_t reroute_avx2(const int32_t* topk_ids, const int32_t* tok_adapter, const int32_t* remap,
                     int32_t* out, int64_t t_begin, int64_t t_end, int64_t K, int64_t A, int64_t E) {
  const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i last_expert = _mm256_set1_epi32(static_cast<int32_t>(E - 1));
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int32_t adapter = tok_adapter[t];
    if (adapter < -1 || adapter >= A) return t * K;
    const int32_t* row = remap + (int64_t(adapter) + 1) * E;
    for (int64_t k = 0; k < K; k += 8) {
      const int32_t live = static_cast<int32_t>(K - k < 8 ? K - k : 8);
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(live), lane_index);
      const __m256i ids = _mm256_maskload_epi32(topk_ids + t * K + k, m);
      const __m256i bad = _mm256_and_si256(
          m, _mm256_or_si256(_mm256_cmpgt_epi32(zero, ids), _mm256_cmpgt_epi32(ids, last_expert)));
      if (!_mm256_testz_si256(bad, bad))
        return t * K + k + __builtin_ctz(unsigned(_mm256_movemask_ps(_mm256_castsi256_ps(bad))));
      const __m256i phys = _mm256_mask_i32gather_epi32(zero, row, ids, m, 4);
      _mm256_maskstore_epi32(out + t * K + k, m, phys);
    }
  }
  return -1;
}

}  // namespace

const RerouteKernel kRerouteAvx2 = reroute_avx2;

}  // namespace moeweave::cpu
