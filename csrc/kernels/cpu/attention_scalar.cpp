// Portable attention: plain loops over the shared body (attention_rows.h).
#include "attention_rows.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

struct ScalarOps {
  static void to_float(DType dtype, const char* row, float* out, int64_t d) {
    for (int64_t i = 0; i < d; ++i) out[i] = element_to_float(dtype, row, i);
  }
  static void scores(const float* q, const float* keys, int64_t n, int64_t d, float* out) {
    for (int64_t j = 0; j < n; ++j) {
      float sum = 0.0f;
      for (int64_t i = 0; i < d; ++i) sum += q[i] * keys[j * d + i];
      out[j] = sum;
    }
  }
  static void accumulate(const float* p, const float* values, int64_t n, int64_t d, float* acc) {
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < d; ++i) acc[i] += p[j] * values[j * d + i];
  }
  static void exp_shifted(float* x, int64_t n, float shift) {
    for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i] - shift);
  }
};

}  // namespace

const AttentionKernel kAttentionScalar = attention_items<ScalarOps>;

}  // namespace moeweave::cpu
