// RMSNorm rows, one portable implementation: a row is read twice from L1, and at decode sizes
// (one row of a few thousand values) the ~2 us of op entry costs more than the arithmetic, so
// per-ISA variants would not show. Eight partial sums let the compiler vectorise the reduction.
#include <algorithm>
#include <cmath>

#include "element_types.h"
#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"

namespace moeweave {
namespace {

template <typename E>
void rows(const void* x_, const void* w_, void* out_, int64_t begin, int64_t end, int64_t h, float eps) {
  using T = typename E::T;
  const T* w = static_cast<const T*>(w_);
  for (int64_t r = begin; r < end; ++r) {
    const T* x = static_cast<const T*>(x_) + r * h;
    T* out = static_cast<T*>(out_) + r * h;
    float partial[8] = {};
    int64_t i = 0;
    for (; i + 8 <= h; i += 8)
      for (int j = 0; j < 8; ++j) partial[j] += E::load(x[i + j]) * E::load(x[i + j]);
    for (; i < h; ++i) partial[0] += E::load(x[i]) * E::load(x[i]);
    float squares = 0.0f;
    for (float p : partial) squares += p;
    const float inverse = 1.0f / std::sqrt(squares / float(h) + eps);
    // The normalised value is rounded to the dtype before the weight multiplies it, as in
    // transformers' RMSNorm (normalise in fp32, cast back, then scale).
    for (i = 0; i < h; ++i) out[i] = E::store(E::load(w[i]) * E::load(E::store(E::load(x[i]) * inverse)));
  }
}

}  // namespace

Status rms_norm(DType dtype, const void* x, const void* weight, void* out, int64_t rows_count, int64_t h, float eps) {
  if (h <= 0 || rows_count < 0) return -EINVAL;
  const bool known = cpu::with_element_type(dtype, [&](auto element) {
    using E = decltype(element);
    parallel_for(rows_count, std::max<int64_t>(1, 16384 / h),
                 [&](int64_t b, int64_t e) { rows<E>(x, weight, out, b, e, h, eps); });
  });
  return known ? kOk : -EINVAL;
}

}  // namespace moeweave
