// Rerouting under every ISA equals the definition remap[a + 1][id], for K below, at and above
// the vector widths; out-of-range adapters and ids report the first offending entry.
#include <random>
#include <vector>

#include "check.h"
#include "moeweave/isa.h"
#include "moeweave/kernels_cpu.h"

using namespace moeweave;

TEST(reroute_isas_agree) {
  std::mt19937 rng(3);
  for (int level = 0; level < kNumIsas; ++level) {
    if (set_isa(static_cast<Isa>(level)) != 0) continue;
    for (int64_t K : {1, 2, 6, 8, 9, 16, 17}) {
      const int64_t T = 1001, A = 5, E = 37;
      std::vector<int32_t> ids(T * K), adapter(T), remap((A + 1) * E), out(T * K, -7);
      for (auto& v : ids) v = int32_t(rng() % E);
      for (auto& v : adapter) v = int32_t(rng() % (A + 1)) - 1;
      for (auto& v : remap) v = int32_t(rng() % 1000);
      int64_t bad = -1;
      CHECK(reroute(ids.data(), adapter.data(), remap.data(), out.data(), T, K, A, E, &bad) == 0);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t k = 0; k < K; ++k) CHECK(out[t * K + k] == remap[(adapter[t] + 1) * E + ids[t * K + k]]);
    }
  }
  set_isa(best_supported_isa());
}

TEST(reroute_reports_first_bad) {
  for (int level = 0; level < kNumIsas; ++level) {
    if (set_isa(static_cast<Isa>(level)) != 0) continue;
    const int64_t T = 50000, K = 3, A = 2, E = 4;
    std::vector<int32_t> ids(T * K, 1), adapter(T, 0), remap((A + 1) * E, 9), out(T * K);
    ids[40000 * K + 2] = 4;   // id == E
    ids[30000 * K + 1] = -1;  // negative id
    adapter[45000] = 2;       // adapter == A
    int64_t bad = -1;
    CHECK(reroute(ids.data(), adapter.data(), remap.data(), out.data(), T, K, A, E, &bad) == -ERANGE);
    CHECK(bad == 30000 * K + 1);
    ids[30000 * K + 1] = 0;
    ids[40000 * K + 2] = 0;
    CHECK(reroute(ids.data(), adapter.data(), remap.data(), out.data(), T, K, A, E, &bad) == -ERANGE);
    CHECK(bad == 45000 * K);
  }
  set_isa(best_supported_isa());
}
