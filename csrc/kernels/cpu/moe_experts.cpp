// The fused routed-expert stage (kernels_cpu.h: moe_experts). Phases, each one parallel_for:
//   1. counting sort of the T*K (token, slot) pairs by expert; gather rows of x in that order
//   2. quantise the gathered rows once (shared by gate and up)
//   3. gate and up for every active expert: work items are (expert, block of output tiles)
//   4. h = silu(gate) * up, quantised for the down projection
//   5. down for every active expert, (expert, tile block) items again
//   6. combine: y[t] = sum_k w[t, k] * out[t, k], in k order (deterministic)
// Experts are reached only through the slot table, so their memory can be anywhere.
#include <algorithm>
#include <vector>

#include "matmul_common.h"
#include "moeweave/half.h"
#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"

namespace moeweave {
namespace {

using cpu::QuantActs;
using cpu::QuantActsBuffer;

constexpr int64_t kTilesPerItem = 4;  // work item granularity: 64 output rows

struct Active {
  int64_t expert, begin, count;  // rows [begin, begin + count) of the gathered buffers
};

struct Item {
  int64_t active, tile_begin, tile_end;
};

int64_t tiles_of(const QuantMatrix& w) { return quant_padded(w.n, kQuantTileRows) / kQuantTileRows; }

std::vector<Item> items_for(const std::vector<Active>& active, const ExpertSlot* slots, QuantMatrix ExpertSlot::*which) {
  std::vector<Item> items;
  for (int64_t a = 0; a < int64_t(active.size()); ++a) {
    const int64_t tiles = tiles_of(slots[active[a].expert].*which);
    for (int64_t t = 0; t < tiles; t += kTilesPerItem) items.push_back({a, t, std::min(tiles, t + kTilesPerItem)});
  }
  return items;
}

// out rows of one active expert = rows of `acts` (quantised) or `xf` (float) through matrix w.
void project(const QuantMatrix& w, const Active& act, const QuantActs& acts, const float* xf, int64_t ldx,
             const Item& item, float* out, int64_t ldo) {
  const cpu::QuantMatmulKernels& kernels = cpu::quant_matmul_kernels();
  float* y = out + act.begin * ldo;
  if (w.bits == 16) {
    const int64_t rows_end = std::min(w.n, item.tile_end * kQuantTileRows);
    // The bf16 kernel reads x rows with stride w.k; every expert shares H and I, so ldx == w.k.
    kernels.bf16(reinterpret_cast<const uint16_t*>(w.packed), w.k, xf + act.begin * ldx, act.count,
                 item.tile_begin * kQuantTileRows, rows_end, y, ldo);
    return;
  }
  QuantActs rows = acts;
  rows.q += act.begin * acts.stride;
  rows.scale += act.begin * (acts.stride / kQuantUnitCols);
  rows.sum += act.begin * (acts.stride / kQuantUnitCols);
  rows.m = act.count;
  kernels.quant(w, rows, item.tile_begin, item.tile_end, y, ldo);
}

}  // namespace

Status moe_experts(const ExpertSlot* slots, int64_t num_slots, DType x_dtype, const void* x, int64_t T,
                   int64_t H, const int32_t* ids, const float* weights, int64_t K, float* y, int64_t* bad_index) {
  if (x_dtype != DType::f32 && x_dtype != DType::bf16) return -EINVAL;
  std::fill(y, y + T * H, 0.0f);
  if (T == 0 || K == 0 || H == 0) return kOk;

  // 1. Group (token, slot) pairs by expert.
  std::vector<int64_t> count(num_slots + 1, 0);
  for (int64_t p = 0; p < T * K; ++p) {
    if (ids[p] < 0 || ids[p] >= num_slots) {
      *bad_index = p;
      return -ERANGE;
    }
    ++count[ids[p] + 1];
  }
  std::vector<Active> active;
  int64_t inter = 0, act_stride = 0, hidden_stride = 0;
  for (int64_t e = 0; e < num_slots; ++e) {
    const int64_t n = count[e + 1];
    count[e + 1] += count[e];
    if (n == 0) continue;
    const ExpertSlot& s = slots[e];
    for (const QuantMatrix* w : {&s.gate, &s.up, &s.down})
      if (cpu::check_matrix(*w)) return -EINVAL;
    // Every expert of a layer shares H and I; the intermediate buffers rely on it.
    if (inter == 0) inter = s.gate.n;
    if (s.gate.k != H || s.up.k != H || s.down.n != H || s.gate.n != inter || s.up.n != inter || s.down.k != inter) {
      *bad_index = e;
      return -EINVAL;
    }
    active.push_back({e, count[e], n});
    for (const QuantMatrix* w : {&s.gate, &s.up})
      if (w->bits != 16) act_stride = std::max(act_stride, quant_padded(H, w->group_size));
    if (s.down.bits != 16) hidden_stride = std::max(hidden_stride, quant_padded(s.gate.n, s.down.group_size));
  }
  std::vector<int64_t> position(T * K);  // (t, k) -> row in expert order
  {
    std::vector<int64_t> next(count.begin(), count.end() - 1);
    for (int64_t p = 0; p < T * K; ++p) position[p] = next[ids[p]]++;
  }
  std::vector<float> xs(T * K * H);  // gathered rows of x, fp32
  parallel_for(T * K, std::max<int64_t>(1, 16384 / H), [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      float* row = xs.data() + position[p] * H;
      const int64_t t = p / K;
      if (x_dtype == DType::f32)
        std::copy_n(static_cast<const float*>(x) + t * H, H, row);
      else
        for (int64_t c = 0; c < H; ++c) row[c] = bf16_to_float(static_cast<const uint16_t*>(x)[t * H + c]);
    }
  });

  // 2. Quantise the gathered rows once for both gate and up.
  QuantActsBuffer x_buffer;
  const QuantActs x_acts =
      act_stride ? cpu::quantize_activations(DType::f32, xs.data(), T * K, H, H, act_stride, x_buffer) : QuantActs{};

  // 3. gate and up.
  std::vector<float> gate(T * K * inter), up(T * K * inter);
  const std::vector<Item> gate_items = items_for(active, slots, &ExpertSlot::gate);
  parallel_for(int64_t(gate_items.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Item& item = gate_items[i];
      const ExpertSlot& s = slots[active[item.active].expert];
      project(s.gate, active[item.active], x_acts, xs.data(), H, item, gate.data(), inter);
      project(s.up, active[item.active], x_acts, xs.data(), H, item, up.data(), inter);
    }
  });

  // 4. h = silu(gate) * up (into gate), then quantised for down.
  silu_mul(DType::f32, gate.data(), up.data(), gate.data(), T * K * inter);
  QuantActsBuffer h_buffer;
  const QuantActs h_acts = hidden_stride ? cpu::quantize_activations(DType::f32, gate.data(), T * K, inter, inter,
                                                                     hidden_stride, h_buffer)
                                         : QuantActs{};

  // 5. down, into per-(token, slot) output rows.
  std::vector<float> out(T * K * H);
  const std::vector<Item> down_items = items_for(active, slots, &ExpertSlot::down);
  parallel_for(int64_t(down_items.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Item& item = down_items[i];
      const Active& act = active[item.active];
      project(slots[act.expert].down, act, h_acts, gate.data(), inter, item, out.data(), H);
    }
  });

  // 6. Weighted sum over each token's K slots.
  parallel_for(T, std::max<int64_t>(1, 16384 / (H * K)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const float w = weights[t * K + k];
        const float* row = out.data() + position[t * K + k] * H;
        for (int64_t c = 0; c < H; ++c) y[t * H + c] += w * row[c];
      }
  });
  return kOk;
}

}  // namespace moeweave
