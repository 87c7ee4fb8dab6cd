// reroute's dispatcher: picks the ISA variant and splits tokens over the thread pool; the first
// out-of-range entry (lowest flat index) is reported whichever thread met it.
#include <algorithm>
#include <atomic>
#include <limits>

#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"
#include "variants.h"

namespace moeweave {

Status reroute(const int32_t* topk_ids, const int32_t* tok_adapter, const int32_t* remap,
               int32_t* out, int64_t T, int64_t K, int64_t A, int64_t E, int64_t* bad_index) {
  if (T == 0 || K == 0) return kOk;
  const cpu::RerouteKernel kernel =
      cpu::for_isa(current_isa(), cpu::kRerouteScalar, cpu::kRerouteAvx2, cpu::kRerouteAvx512);
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  parallel_for(T, std::max<int64_t>(1, (1 << 16) / K), [&](int64_t begin, int64_t end) {
    const int64_t bad = kernel(topk_ids, tok_adapter, remap, out, begin, end, K, A, E);
    if (bad < 0) return;
    int64_t seen = first_bad.load();
    while (bad < seen && !first_bad.compare_exchange_weak(seen, bad)) {
    }
  });
  if (first_bad.load() == std::numeric_limits<int64_t>::max()) return kOk;
  *bad_index = first_bad.load();
  return -ERANGE;
}

}  // namespace moeweave
