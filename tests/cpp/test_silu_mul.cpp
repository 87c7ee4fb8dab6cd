// Every ISA variant this CPU runs agrees with a double-precision silu(g) * u within a stated
// tolerance (fp32: 4 ulp-scale relative; fp16/bf16: one rounding of the storage type).
#include <cmath>
#include <random>
#include <vector>

#include "check.h"
#include "moeweave/half.h"
#include "moeweave/isa.h"
#include "moeweave/kernels_cpu.h"

using namespace moeweave;

namespace {

double silu_mul_exact(double g, double u) { return g / (1.0 + std::exp(-g)) * u; }

}  // namespace

TEST(silu_mul_isas_agree) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (int level = 0; level < kNumIsas; ++level) {
    if (set_isa(static_cast<Isa>(level)) != 0) continue;
    for (int64_t n : {0, 1, 7, 19, 111, 70001}) {
      std::vector<float> g(n), u(n), o(n);
      std::vector<uint16_t> gh(n), uh(n), oh(n), gb(n), ub(n), ob(n);
      for (int64_t i = 0; i < n; ++i) {
        g[i] = normal(rng);
        u[i] = normal(rng);
        gh[i] = float_to_f16(g[i]);
        uh[i] = float_to_f16(u[i]);
        gb[i] = float_to_bf16(g[i]);
        ub[i] = float_to_bf16(u[i]);
      }
      CHECK(silu_mul(DType::f32, g.data(), u.data(), o.data(), n) == 0);
      CHECK(silu_mul(DType::f16, gh.data(), uh.data(), oh.data(), n) == 0);
      CHECK(silu_mul(DType::bf16, gb.data(), ub.data(), ob.data(), n) == 0);
      for (int64_t i = 0; i < n; ++i) {
        const double want = silu_mul_exact(g[i], u[i]);
        CHECK(std::fabs(o[i] - want) <= 1e-6 * std::fabs(want) + 1e-30);
        const double want_h = silu_mul_exact(f16_to_float(gh[i]), f16_to_float(uh[i]));
        CHECK(std::fabs(f16_to_float(oh[i]) - want_h) <= 1e-3 * std::fabs(want_h) + 6e-8);
        const double want_b = silu_mul_exact(bf16_to_float(gb[i]), bf16_to_float(ub[i]));
        CHECK(std::fabs(bf16_to_float(ob[i]) - want_b) <= 8e-3 * std::fabs(want_b) + 1e-30);
      }
    }
    CHECK(silu_mul(DType::i32, nullptr, nullptr, nullptr, 4) == -EINVAL);
  }
  set_isa(best_supported_isa());
}
