// Activation quantisation: every ISA variant writes exactly the bytes, scales and sums of the
// scalar rows (the dot products' correction terms depend on them), for f32 and bf16, ragged K.
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "moeweave/half.h"
#include "variants.h"

using namespace moeweave;

TEST(quantize_rows_isas_agree) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const cpu::QuantMatmulKernels* tables[] = {&cpu::kQuantMatmulScalar, &cpu::kQuantMatmulAvx2, &cpu::kQuantMatmulAvx512};
  for (int64_t k : {1, 31, 32, 33, 100, 2048}) {
    const int64_t rows = 3, stride = quant_padded(k, 64), units = stride / kQuantUnitCols;
    std::vector<float> x(rows * k);
    std::vector<uint16_t> xb(rows * k);
    for (int64_t i = 0; i < rows * k; ++i) {
      x[i] = normal(rng);
      xb[i] = float_to_bf16(x[i]);
    }
    for (DType dtype : {DType::f32, DType::bf16}) {
      const void* data = dtype == DType::f32 ? static_cast<const void*>(x.data()) : xb.data();
      std::vector<int8_t> q0(rows * stride);
      std::vector<float> s0(rows * units);
      std::vector<int32_t> t0(rows * units);
      cpu::quantize_rows_scalar(dtype, data, rows, k, k, stride, q0.data(), s0.data(), t0.data());
      for (int level = 1; level < kNumIsas; ++level) {
        if (!isa_supported(static_cast<Isa>(level))) continue;
        std::vector<int8_t> q(rows * stride, 99);
        std::vector<float> s(rows * units);
        std::vector<int32_t> t(rows * units);
        tables[level]->quantize_rows(dtype, data, rows, k, k, stride, q.data(), s.data(), t.data());
        CHECK(q == q0);
        CHECK(std::memcmp(s.data(), s0.data(), s.size() * sizeof(float)) == 0);
        CHECK(t == t0);
      }
    }
  }
}
