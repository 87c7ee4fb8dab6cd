// attention's dispatcher: checks the shapes, picks the ISA table and spreads work items (groups
// of query heads sharing a key/value head) over the thread pool.
#include <algorithm>

#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"
#include "attention_rows.h"
#include "variants.h"

namespace moeweave {

Status attention(const AttentionArgs& a) {
  if (a.dtype != DType::f32 && a.dtype != DType::f16 && a.dtype != DType::bf16) return -EINVAL;
  if (a.batch < 0 || a.queries < 0 || a.keys < 0 || a.heads <= 0 || a.kv_heads <= 0 || a.dk <= 0 || a.dv <= 0 ||
      a.heads % a.kv_heads)
    return -EINVAL;
  const cpu::AttentionKernel kernel =
      cpu::for_isa(current_isa(), cpu::kAttentionScalar, cpu::kAttentionAvx2, cpu::kAttentionAvx512);
  // An item costs about 4 * keys * (dk + dv) multiply-adds; keep a chunk above ~32k of them.
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, a.keys * (a.dk + a.dv)));
  parallel_for(cpu::attention_items_count(a), grain, [&](int64_t b, int64_t e) { kernel(a, b, e); });
  return kOk;
}

}  // namespace moeweave
