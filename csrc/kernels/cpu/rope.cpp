// Rotary position embedding (half-split layout), one portable implementation: a decode step
// rotates a few dozen rows of 64-128 values, so the ~2 us of op entry outweighs the arithmetic,
// as for RMSNorm. Each product and the sum are rounded to the dtype, as transformers' three
// tensor ops round them.
#include <algorithm>

#include "element_types.h"
#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"

namespace moeweave {
namespace {

template <typename E>
float rounded(float v) {
  return E::load(E::store(v));
}

template <typename E>
void rows(const void* x_, const void* cos_, const void* sin_, void* out_, int64_t begin, int64_t end, int64_t heads,
          int64_t seq, int64_t d) {
  using T = typename E::T;
  const int64_t half = d / 2;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t s = r / heads % seq;
    const T* x = static_cast<const T*>(x_) + r * d;
    const T* c = static_cast<const T*>(cos_) + s * d;
    const T* sn = static_cast<const T*>(sin_) + s * d;
    T* out = static_cast<T*>(out_) + r * d;
    for (int64_t i = 0; i < d; ++i) {
      const float rotated = i < half ? -E::load(x[i + half]) : E::load(x[i - half]);
      out[i] = E::store(rounded<E>(E::load(x[i]) * E::load(c[i])) + rounded<E>(rotated * E::load(sn[i])));
    }
  }
}

}  // namespace

Status rope(DType dtype, const void* x, const void* cos, const void* sin, void* out, int64_t batch, int64_t seq,
            int64_t heads, int64_t d) {
  if (d <= 0 || d % 2 || batch < 0 || seq < 0 || heads < 0) return -EINVAL;
  const bool known = cpu::with_element_type(dtype, [&](auto element) {
    using E = decltype(element);
    parallel_for(batch * seq * heads, std::max<int64_t>(1, 16384 / d),
                 [&](int64_t b, int64_t e) { rows<E>(x, cos, sin, out, b, e, heads, seq, d); });
  });
  return known ? kOk : -EINVAL;
}

}  // namespace moeweave
