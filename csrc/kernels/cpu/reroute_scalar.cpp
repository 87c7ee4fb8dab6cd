// Scalar rerouting: one table lookup per (token, slot).
#include "scalar_math.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

int64_t reroute_scalar(const int32_t* topk_ids, const int32_t* tok_adapter, const int32_t* remap,
                       int32_t* out, int64_t t_begin, int64_t t_end, int64_t K, int64_t A,
                       int64_t E) {
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t bad = reroute_row(topk_ids + t * K, tok_adapter[t], remap, out + t * K, t, K, A, E);
    if (bad >= 0) return bad;
  }
  return -1;
}

}  // namespace

const RerouteKernel kRerouteScalar = reroute_scalar;

}  // namespace moeweave::cpu
