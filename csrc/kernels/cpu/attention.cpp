// attention's dispatchers: check the shapes, pick the ISA table and spread work items (query
// heads sharing a key/value head, times a block of queries) over the thread pool;
// attention_batch spreads the items of many independent problems (one per decoding sequence)
// over it in one go.
#include <algorithm>
#include <vector>

#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"
#include "attention_rows.h"
#include "variants.h"

namespace moeweave {

namespace {

bool valid(const AttentionArgs& a) {
  if (a.dtype != DType::f32 && a.dtype != DType::f16 && a.dtype != DType::bf16) return false;
  return a.batch >= 0 && a.queries >= 0 && a.keys >= 0 && a.heads > 0 && a.kv_heads > 0 && a.dk > 0 && a.dv > 0 &&
         a.heads % a.kv_heads == 0;
}

// Attention over a bf16 cache multiplies bf16 pairs where the CPU can: twice the fp32 rate, and
// no conversion of the cache (prompts and decode steps alike, one query row per item included).
cpu::AttentionKernel kernel_for(const AttentionArgs& a) {
  if (a.dtype == DType::bf16 && current_isa() == Isa::avx512 && avx512_bf16_supported())
    return cpu::kAttentionAvx512Bf16;
  return cpu::for_isa(current_isa(), cpu::kAttentionScalar, cpu::kAttentionAvx2, cpu::kAttentionAvx512);
}

// A decode item costs up to kHeadsPerItem * keys * (dk + dv) multiply-adds (a prompt's up to
// kQueryRows times more); keep a chunk above ~64k of them.
int64_t grain_for(int64_t keys, int64_t d) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(1, keys * d)); }

}  // namespace

Status attention(const AttentionArgs& a) {
  if (!valid(a)) return -EINVAL;
  const cpu::AttentionKernel run = kernel_for(a);
  parallel_for(cpu::attention_items_count(a), grain_for(a.keys, a.dk + a.dv), [&](int64_t b, int64_t e) { run(a, b, e); });
  return kOk;
}

Status attention_batch(const AttentionArgs* problems, int64_t count) {
  std::vector<int64_t> first_item(count + 1, 0);  // problem p owns items [first_item[p], first_item[p + 1])
  int64_t longest = 0;
  for (int64_t p = 0; p < count; ++p) {
    if (!valid(problems[p])) return -EINVAL;
    first_item[p + 1] = first_item[p] + cpu::attention_items_count(problems[p]);
    longest = std::max(longest, problems[p].keys * (problems[p].dk + problems[p].dv));
  }
  parallel_for(first_item[count], grain_for(longest, 1), [&](int64_t b, int64_t e) {
    int64_t p = std::upper_bound(first_item.begin(), first_item.end(), b) - first_item.begin() - 1;
    for (; b < e; ++p) {
      const int64_t end = std::min(e, first_item[p + 1]);
      if (end > b) kernel_for(problems[p])(problems[p], b - first_item[p], end - first_item[p]);
      b = end;
    }
  });
  return kOk;
}

}  // namespace moeweave
