// Portable attention: plain loops over the shared body (attention_rows.h).
#include "attention_rows.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

struct ScalarOps : RowByRow<ScalarOps> {
  static constexpr bool kPairs = false;
  static void to_float(DType dtype, const char* row, float* out, int64_t d) {
    for (int64_t i = 0; i < d; ++i) out[i] = element_to_float(dtype, row, i);
  }
  static void from_float(DType dtype, const float* in, char* row, int64_t d) {
    for (int64_t i = 0; i < d; ++i) store_element(dtype, row, i, in[i]);
  }
  static void row_scores(const float* q, const float* keys, int64_t n, int64_t d, float* out) {
    for (int64_t j = 0; j < n; ++j) {
      float sum = 0.0f;
      for (int64_t i = 0; i < d; ++i) sum += q[i] * keys[j * d + i];
      out[j] = sum;
    }
  }
  static void row_accumulate(const float* p, const float* values, int64_t n, int64_t d, float* acc) {
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < d; ++i) acc[i] += p[j] * values[j * d + i];
  }
  static float max(const float* x, const uint8_t* visible, int64_t n) {
    float best = -INFINITY;
    for (int64_t i = 0; i < n; ++i)
      if (visible[i]) best = std::max(best, x[i]);
    return best;
  }
  static float exp_visible(float* x, const uint8_t* visible, int64_t n, float shift) {
    float total = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      x[i] = visible[i] ? std::exp(x[i] - shift) : 0.0f;
      total += x[i];
    }
    return total;
  }
};

}  // namespace

const AttentionKernel kAttentionScalar = attention_items<ScalarOps>;

}  // namespace moeweave::cpu
