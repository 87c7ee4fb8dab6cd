// Portable attention: plain loops over the shared body (attention_rows.h).
#include "attention_rows.h"
#include "variants.h"

namespace moeweave::cpu {
namespace {

struct ScalarOps {
  static float dot(DType dtype, const float* q, const char* row, int64_t d) {
    float sum = 0.0f;
    for (int64_t i = 0; i < d; ++i) sum += q[i] * element_to_float(dtype, row, i);
    return sum;
  }
  static void axpy(DType dtype, float p, const char* row, float* acc, int64_t d) {
    for (int64_t i = 0; i < d; ++i) acc[i] += p * element_to_float(dtype, row, i);
  }
  static void exp_shifted(float* x, int64_t n, float shift) {
    for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i] - shift);
  }
};

}  // namespace

const AttentionKernel kAttentionScalar = attention_rows<ScalarOps>;

}  // namespace moeweave::cpu
