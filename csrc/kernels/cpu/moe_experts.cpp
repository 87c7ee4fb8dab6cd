// The fused routed-expert stage and its backward (kernels_cpu.h: moe_experts, moe_experts_backward).
// Forward phases, each one parallel_for:
//   1. counting sort of the T*K (token, slot) pairs by expert; gather rows of x in that order
//   2. quantise the gathered rows once (shared by gate and up)
//   3. gate and up for every active expert: work items are (expert, block of output tiles)
//   4. h = silu(gate) * up, quantised for the down projection
//   5. down for every active expert, (expert, tile block) items again
//   6. weighted sum: y[t] = sum_k w[t, k] * out[t, k], in k order (deterministic)
// The backward recomputes phases 1-5 (nothing is kept from the forward), then runs the chain rule
// back through them with the transposed products of quant_transposed.h, items being (expert,
// block of 32-column units). Experts are reached only through the slot table, so their memory
// can be anywhere.
#include <algorithm>
#include <cmath>
#include <vector>

#include "matmul_common.h"
#include "moeweave/half.h"
#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"

namespace moeweave {
namespace {

using cpu::QuantActs;
using cpu::QuantActsBuffer;

// Work item granularity: 256 output rows. An item's tiles stream as two far-apart runs
// (quant_matmul_avx512.cpp), and longer runs keep the hardware prefetchers going: against 4
// tiles, a DeepSeek-V2-Lite serve step took 0.94x at 8 requests and 0.96x at 32 (16 steps, 8
// alternating runs in one process), the same at 1; 8 tiles did not differ from 4, 32 was like 16
// at 8 and 32 requests but 1.04x at 1 (fewer items left a thread idle at the end).
constexpr int64_t kTilesPerItem = 16;
constexpr int64_t kUnitsPerItem = 4;  // in the backward: 128 output columns

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

// Items of (active expert, block of 32-column units) over `columns` output columns.
std::vector<Item> unit_items(const std::vector<Active>& active, int64_t columns) {
  const int64_t units = quant_padded(columns, kQuantUnitCols) / kQuantUnitCols;
  std::vector<Item> items;
  for (int64_t a = 0; a < int64_t(active.size()); ++a)
    for (int64_t u = 0; u < units; u += kUnitsPerItem) items.push_back({a, u, std::min(units, u + kUnitsPerItem)});
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

// Phases 1-5, shared by the forward and the backward: the (token, slot) pairs grouped by expert
// and each pair's gate, up and down outputs, rows in expert order.
struct ExpertPass {
  std::vector<Active> active;
  std::vector<int64_t> position;  // (t, k) -> row in expert order
  int64_t inter = 0;
  std::vector<float> xs;          // [T*K, H] gathered rows of x, fp32
  std::vector<float> gate, up;    // [T*K, I] pre-activation outputs
  std::vector<float> h;           // [T*K, I] silu(gate) * up
  std::vector<float> out;         // [T*K, H] down outputs
  QuantActsBuffer x_buffer, h_buffer;
};

// The calling thread's ExpertPass, kept between calls. A prefill runs the stage once per layer
// with the same shapes, and fresh buffers that large cost page faults on every call (a 512-token
// DeepSeek-V2-Lite layer, bench_moe_experts T=512: 348-561 -> 196-288 ms with them kept). Buffers
// more than 4x what a call of `rows` (token, slot) pairs needs are released first, so a prompt's
// scratch does not outlive it into the decode that follows. Every buffer is overwritten before
// it is read, so nothing carries over between calls.
ExpertPass& reusable_pass(int64_t rows, int64_t H) {
  thread_local ExpertPass pass;
  if (4 * rows * H < int64_t(pass.xs.capacity())) pass = ExpertPass{};
  pass.active.clear();
  pass.inter = 0;
  return pass;
}

Status run_experts(const ExpertSlot* slots, int64_t num_slots, DType x_dtype, const void* x, int64_t T, int64_t H,
                   const int32_t* ids, int64_t K, ExpertPass& pass, int64_t* bad_index) {
  // 1. Group (token, slot) pairs by expert.
  std::vector<int64_t> count(num_slots + 1, 0);
  for (int64_t p = 0; p < T * K; ++p) {
    if (ids[p] < 0 || ids[p] >= num_slots) {
      *bad_index = p;
      return -ERANGE;
    }
    ++count[ids[p] + 1];
  }
  std::vector<Active>& active = pass.active;
  int64_t& inter = pass.inter;
  int64_t act_stride = 0, hidden_stride = 0;
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
  pass.position.resize(T * K);
  {
    std::vector<int64_t> next(count.begin(), count.end() - 1);
    for (int64_t p = 0; p < T * K; ++p) pass.position[p] = next[ids[p]]++;
  }
  pass.xs.resize(T * K * H);
  parallel_for(T * K, std::max<int64_t>(1, 16384 / H), [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      float* row = pass.xs.data() + pass.position[p] * H;
      const int64_t t = p / K;
      if (x_dtype == DType::f32)
        std::copy_n(static_cast<const float*>(x) + t * H, H, row);
      else
        for (int64_t c = 0; c < H; ++c) row[c] = bf16_to_float(static_cast<const uint16_t*>(x)[t * H + c]);
    }
  });

  // 2. Quantise the gathered rows once for both gate and up.
  const QuantActs x_acts = act_stride ? cpu::quantize_activations(DType::f32, pass.xs.data(), T * K, H, H,
                                                                  act_stride, pass.x_buffer)
                                      : QuantActs{};

  // 3. gate and up.
  pass.gate.resize(T * K * inter);
  pass.up.resize(T * K * inter);
  const std::vector<Item> gate_items = items_for(active, slots, &ExpertSlot::gate);
  parallel_for(int64_t(gate_items.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Item& item = gate_items[i];
      const ExpertSlot& s = slots[active[item.active].expert];
      project(s.gate, active[item.active], x_acts, pass.xs.data(), H, item, pass.gate.data(), inter);
      project(s.up, active[item.active], x_acts, pass.xs.data(), H, item, pass.up.data(), inter);
    }
  });

  // 4. h = silu(gate) * up, then quantised for down.
  pass.h.resize(T * K * inter);
  silu_mul(DType::f32, pass.gate.data(), pass.up.data(), pass.h.data(), T * K * inter);
  const QuantActs h_acts = hidden_stride ? cpu::quantize_activations(DType::f32, pass.h.data(), T * K, inter,
                                                                     inter, hidden_stride, pass.h_buffer)
                                         : QuantActs{};

  // 5. down, into per-(token, slot) output rows.
  pass.out.resize(T * K * H);
  const std::vector<Item> down_items = items_for(active, slots, &ExpertSlot::down);
  parallel_for(int64_t(down_items.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Item& item = down_items[i];
      const Active& act = active[item.active];
      project(slots[act.expert].down, act, h_acts, pass.h.data(), inter, item, pass.out.data(), H);
    }
  });
  return kOk;
}

// rows [act.begin, act.begin + act.count) of dx (= or +=) the same rows of dy . w, for the
// columns of item's units.
void transposed_rows(const QuantMatrix& w, const Active& act, const Item& item, const float* dy, float* dx,
                     bool accumulate) {
  cpu::quant_matmul_kernels().transposed(w, dy + act.begin * w.n, act.count, w.n, item.tile_begin, item.tile_end,
                                         dx + act.begin * w.k, w.k, accumulate);
}

}  // namespace

Status moe_experts(const ExpertSlot* slots, int64_t num_slots, DType x_dtype, const void* x, int64_t T,
                   int64_t H, const int32_t* ids, const float* weights, int64_t K, float* y, int64_t* bad_index) {
  if (x_dtype != DType::f32 && x_dtype != DType::bf16) return -EINVAL;
  std::fill(y, y + T * H, 0.0f);
  if (T == 0 || K == 0 || H == 0) return kOk;
  ExpertPass& pass = reusable_pass(T * K, H);  // a local reference: the pool's lambdas capture it
  if (Status s = run_experts(slots, num_slots, x_dtype, x, T, H, ids, K, pass, bad_index)) return s;

  // 6. Weighted sum over each token's K slots.
  parallel_for(T, std::max<int64_t>(1, 16384 / (H * K)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const float w = weights[t * K + k];
        const float* row = pass.out.data() + pass.position[t * K + k] * H;
        for (int64_t c = 0; c < H; ++c) y[t * H + c] += w * row[c];
      }
  });
  return kOk;
}

Status moe_experts_backward(const ExpertSlot* slots, int64_t num_slots, DType x_dtype, const void* x, int64_t T,
                            int64_t H, const int32_t* ids, const float* weights, int64_t K, const float* dy,
                            float* dx, float* dweights, int64_t* bad_index) {
  if (x_dtype != DType::f32 && x_dtype != DType::bf16) return -EINVAL;
  std::fill(dx, dx + T * H, 0.0f);
  std::fill(dweights, dweights + T * K, 0.0f);
  if (T == 0 || K == 0 || H == 0) return kOk;
  ExpertPass& pass = reusable_pass(T * K, H);  // a local reference: the pool's lambdas capture it
  if (Status s = run_experts(slots, num_slots, x_dtype, x, T, H, ids, K, pass, bad_index)) return s;
  const int64_t I = pass.inter;
  const std::vector<Active>& active = pass.active;

  // d weights[t, k] = dy[t] . out[t, k]; the down stage's output gradient is weights[t, k] dy[t].
  std::vector<float> d_out(T * K * H);  // [T*K, H] in expert order
  parallel_for(T * K, std::max<int64_t>(1, 16384 / H), [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const float* g = dy + (p / K) * H;
      const float* o = pass.out.data() + pass.position[p] * H;
      float* d = d_out.data() + pass.position[p] * H;
      float dot = 0.0f;
      for (int64_t c = 0; c < H; ++c) {
        dot += g[c] * o[c];
        d[c] = weights[p] * g[c];
      }
      dweights[p] = dot;
    }
  });

  // dh = d_out . down, then through h = silu(gate) * up (into gate and up's buffers).
  std::vector<float> dh(T * K * I);
  const std::vector<Item> inter_items = unit_items(active, I);
  parallel_for(int64_t(inter_items.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Item& item = inter_items[i];
      const Active& act = active[item.active];
      transposed_rows(slots[act.expert].down, act, item, d_out.data(), dh.data(), false);
    }
  });
  parallel_for(T * K * I, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float g = pass.gate[i], sig = 1.0f / (1.0f + std::exp(-g));
      pass.gate[i] = dh[i] * pass.up[i] * sig * (1.0f + g * (1.0f - sig));  // silu'(g) = s (1 + g (1 - s))
      pass.up[i] = dh[i] * g * sig;
    }
  });

  // dxs = d_gate . gate + d_up . up, per pair; then dx[t] = sum_k dxs[t, k] in k order.
  std::vector<float>& dxs = pass.xs;
  const std::vector<Item> hidden_items = unit_items(active, H);
  parallel_for(int64_t(hidden_items.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Item& item = hidden_items[i];
      const Active& act = active[item.active];
      transposed_rows(slots[act.expert].gate, act, item, pass.gate.data(), dxs.data(), false);
      transposed_rows(slots[act.expert].up, act, item, pass.up.data(), dxs.data(), true);
    }
  });
  parallel_for(T, std::max<int64_t>(1, 16384 / (H * K)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const float* row = dxs.data() + pass.position[t * K + k] * H;
        for (int64_t c = 0; c < H; ++c) dx[t * H + c] += row[c];
      }
  });
  return kOk;
}

}  // namespace moeweave
