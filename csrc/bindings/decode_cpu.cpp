// Binding of the native decode step (part of moeweave._C): a DecodeStack is built once per model
// from its weights, which cross as DLPack capsules and are checked here; the stack keeps their
// addresses, so the Python side (moeweave.models.native_decode) keeps the tensors alive with it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bind_cpu.h"
#include "moeweave/decode_step.h"
#include "quant_args.h"

namespace py = pybind11;
using moeweave::DType;
using moeweave::bindings::QuantMatrixArg;
using moeweave::bindings::TensorArg;

namespace {

constexpr const char* kOp = "DecodeStack";

// A bf16 vector of `size` entries; its address, or null for None.
const uint16_t* vector_of(const py::dict& layer, const char* key, int64_t size) {
  if (!layer.contains(key) || layer[key].is_none()) return nullptr;
  TensorArg t(kOp, key, layer[key].cast<py::capsule>());
  t.expect(kDLCPU, 1, {DType::bf16});
  if (t.size(0) != size) t.fail("must have " + std::to_string(size) + " entries, got " + t.shape_text());
  return t.data<uint16_t>();
}

// A projection given as (packed, scales, zeros, n, k, bits, group_size, bias), or absent (None).
moeweave::DecodeProjection projection_of(const py::dict& layer, const char* key, int64_t n, int64_t k) {
  moeweave::DecodeProjection p;
  if (!layer.contains(key) || layer[key].is_none()) return p;
  const py::tuple f = layer[key].cast<py::tuple>();
  if (f.size() != 8) throw py::value_error(std::string(kOp) + ": '" + key + "' must be an 8-tuple");
  const QuantMatrixArg w(kOp, kDLCPU, f[0].cast<py::capsule>(), f[1].cast<std::optional<py::capsule>>(),
                         f[2].cast<std::optional<py::capsule>>(), f[3].cast<int64_t>(), f[4].cast<int64_t>(),
                         f[5].cast<int>(), f[6].cast<int>());
  if ((n >= 0 && w.matrix.n != n) || w.matrix.k != k)
    throw py::value_error(std::string(kOp) + ": '" + key + "' must be [" + (n >= 0 ? std::to_string(n) : "any") +
                          ", " + std::to_string(k) + "], got [" + std::to_string(w.matrix.n) + ", " +
                          std::to_string(w.matrix.k) + "]");
  p.matrix = w.matrix;
  if (!f[7].is_none()) {
    TensorArg bias(kOp, "bias", f[7].cast<py::capsule>());
    bias.expect(kDLCPU, 1, {DType::bf16});
    if (bias.size(0) != w.matrix.n) bias.fail("must have one entry per output row");
    p.bias = bias.data<uint16_t>();
  }
  return p;
}

// A bf16 tensor of exactly `shape`; its address.
const uint16_t* tensor_of(const py::dict& layer, const char* key, const std::vector<int64_t>& shape) {
  if (!layer.contains(key) || layer[key].is_none()) throw py::value_error(std::string(kOp) + ": the layer lacks '" + key + "'");
  TensorArg t(kOp, key, layer[key].cast<py::capsule>());
  t.expect(kDLCPU, int(shape.size()), {DType::bf16});
  if (t.shape() != shape) t.fail("has the wrong shape: " + t.shape_text());
  return t.data<uint16_t>();
}

// Grouped-query attention's weights.
void attention_of(const moeweave::DecodeConfig& c, const py::dict& layer, moeweave::DecodeLayer& out) {
  const int64_t h = c.hidden, d = c.head_dim, q_width = c.heads * d, kv_width = c.kv_heads * d;
  out.q = projection_of(layer, "q", q_width, h);
  out.k = projection_of(layer, "k", kv_width, h);
  out.v = projection_of(layer, "v", kv_width, h);
  out.o = projection_of(layer, "o", h, q_width);
  if (!out.q.matrix.packed || !out.k.matrix.packed || !out.v.matrix.packed || !out.o.matrix.packed)
    throw py::value_error("DecodeStack: a layer needs the q, k, v and o projections");
  const bool per_head = c.qk_norm == moeweave::QkNorm::head;
  out.q_norm = vector_of(layer, "q_norm", per_head ? d : q_width);
  out.k_norm = vector_of(layer, "k_norm", per_head ? d : kv_width);
  if (c.qk_norm != moeweave::QkNorm::none && (!out.q_norm || !out.k_norm))
    throw py::value_error("DecodeStack: the config asks for QK-norms the layer lacks");
}

// MLA's attention weights (decode_step.h: DecodeLayer).
void mla_of(const moeweave::DecodeConfig& c, const py::dict& layer, moeweave::DecodeLayer& out) {
  const moeweave::MlaConfig& m = c.mla;
  const int64_t h = c.hidden, q_width = c.heads * (m.nope + m.rope);
  if (m.q_lora_rank) {
    out.q_a = projection_of(layer, "q_a", m.q_lora_rank, h);
    out.q_a_norm = vector_of(layer, "q_a_norm", m.q_lora_rank);
    out.q_b = projection_of(layer, "q_b", q_width, m.q_lora_rank);
    if (!out.q_a.matrix.packed || !out.q_a_norm || !out.q_b.matrix.packed)
      throw py::value_error("DecodeStack: an MLA layer with q_lora_rank needs q_a, q_a_norm and q_b");
  } else {
    out.q = projection_of(layer, "q", q_width, h);
  }
  out.kv_a = projection_of(layer, "kv_a", m.kv_lora_rank + m.rope, h);
  out.kv_norm = vector_of(layer, "kv_norm", m.kv_lora_rank);
  out.w_uk = tensor_of(layer, "w_uk", {c.heads, m.nope, m.kv_lora_rank});
  out.w_uv = tensor_of(layer, "w_uv", {c.heads, m.kv_lora_rank, m.v_head_dim});
  out.o = projection_of(layer, "o", h, c.heads * m.v_head_dim);
  if ((!m.q_lora_rank && !out.q.matrix.packed) || !out.kv_a.matrix.packed || !out.kv_norm || !out.o.matrix.packed)
    throw py::value_error("DecodeStack: an MLA layer needs q (or q_a, q_b), kv_a, kv_norm and o");
}

moeweave::DecodeLayer layer_of(const moeweave::DecodeConfig& c, const py::dict& layer) {
  const int64_t h = c.hidden;
  moeweave::DecodeLayer out;
  out.input_norm = vector_of(layer, "input_norm", h);
  out.post_attention_norm = vector_of(layer, "post_attention_norm", h);
  if (!out.input_norm || !out.post_attention_norm) throw py::value_error("DecodeStack: a layer needs both norms");
  if (c.attention == moeweave::AttentionKind::mla) {
    mla_of(c, layer, out);
  } else {
    attention_of(c, layer, out);
  }
  out.gate = projection_of(layer, "gate", -1, h);
  out.up = projection_of(layer, "up", out.gate.matrix.n, h);
  out.down = projection_of(layer, "down", h, out.gate.matrix.n);
  const bool has_mlp = out.gate.matrix.packed && out.up.matrix.packed && out.down.matrix.packed;
  if (layer.contains("router") && !layer["router"].is_none()) {
    out.router = projection_of(layer, "router", -1, h).matrix;
    if (out.router.bits != 16) throw py::value_error("DecodeStack: the router must be a bf16 matrix");
    TensorArg table(kOp, "expert_table", layer["expert_table"].cast<py::capsule>());
    table.expect(kDLCPU, 3, {DType::i64});
    if (table.size(1) != 3 || table.size(2) != moeweave::bindings::kTableFields)
      table.fail("must be [E, 3, 8], got " + table.shape_text());
    out.expert_table = table.data<int64_t>();
    out.num_slots = table.size(0);
    if (layer.contains("remap") && !layer["remap"].is_none()) {
      TensorArg remap(kOp, "remap", layer["remap"].cast<py::capsule>());
      remap.expect(kDLCPU, 2, {DType::i32});
      if (remap.size(1) != out.router.n) remap.fail("must have one column per routed expert");
      out.remap = remap.data<int32_t>();
      out.adapters = remap.size(0) - 1;
    }
    if (layer.contains("shared_gate") && !layer["shared_gate"].is_none()) {
      out.shared_gate = projection_of(layer, "shared_gate", 1, h).matrix;
      if (out.shared_gate.bits != 16) throw py::value_error("DecodeStack: the shared expert gate must be bf16");
      out.sigmoid = vector_of(layer, "sigmoid", 65536);
      if (!out.sigmoid) throw py::value_error("DecodeStack: a shared expert gate needs the sigmoid table");
    }
  } else if (!has_mlp) {
    throw py::value_error("DecodeStack: a layer needs a router and experts, or a dense MLP");
  }
  return out;
}

class PyDecodeStack {
 public:
  // mla: None (grouped-query attention) or a dict of MlaConfig's fields; router: 0 (softmax
  // top-k) or 1 (DeepSeek-V2's greedy top-k, times routed_scaling_factor).
  PyDecodeStack(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t top_k, bool norm_topk_prob,
                int qk_norm, double eps, const py::list& layers, const std::optional<py::dict>& mla, int router,
                double routed_scaling_factor) {
    if (hidden <= 0 || heads <= 0 || kv_heads <= 0 || heads % kv_heads || head_dim <= 0 || head_dim % 2)
      throw py::value_error("DecodeStack: invalid attention sizes");
    if (qk_norm < 0 || qk_norm > 2) throw py::value_error("DecodeStack: qk_norm must be 0 (none), 1 (head) or 2 (full)");
    if (router < 0 || router > 1) throw py::value_error("DecodeStack: router must be 0 (softmax top-k) or 1 (DeepSeek-V2)");
    config_ = {hidden, heads, kv_heads, head_dim, top_k, norm_topk_prob, static_cast<moeweave::QkNorm>(qk_norm),
               static_cast<float>(eps)};
    config_.router = static_cast<moeweave::RouterKind>(router);
    config_.routed_scaling_factor = static_cast<float>(routed_scaling_factor);
    if (mla) {
      const py::dict& f = *mla;
      moeweave::MlaConfig& m = config_.mla;
      m.q_lora_rank = f["q_lora_rank"].cast<int64_t>();
      m.kv_lora_rank = f["kv_lora_rank"].cast<int64_t>();
      m.nope = f["nope"].cast<int64_t>();
      m.rope = f["rope"].cast<int64_t>();
      m.v_head_dim = f["v_head_dim"].cast<int64_t>();
      m.scale = f["scale"].cast<float>();
      m.latent_eps = f["latent_eps"].cast<float>();
      if (m.q_lora_rank < 0 || m.kv_lora_rank <= 0 || m.nope <= 0 || m.rope != head_dim || m.v_head_dim <= 0 ||
          kv_heads != 1)
        throw py::value_error("DecodeStack: invalid MLA sizes (kv_heads must be 1 and head_dim the rotary dim)");
      config_.attention = moeweave::AttentionKind::mla;
    }
    std::vector<moeweave::DecodeLayer> parsed;
    for (const py::handle layer : layers) parsed.push_back(layer_of(config_, layer.cast<py::dict>()));
    stack_ = std::make_unique<moeweave::DecodeStack>(config_, std::move(parsed));
  }

  void step(const py::capsule& hidden_c, const py::capsule& positions_c, const py::capsule& cos_c,
            const py::capsule& sin_c, const py::capsule& caches_c, const py::capsule& lengths_c,
            const py::capsule& capacities_c, const std::optional<py::capsule>& mask_c,
            const std::optional<py::capsule>& adapters_c) {
    TensorArg hidden(kOp, "hidden", hidden_c), positions(kOp, "positions", positions_c), cos(kOp, "cos", cos_c),
        sin(kOp, "sin", sin_c), caches(kOp, "caches", caches_c), lengths(kOp, "lengths", lengths_c),
        capacities(kOp, "capacities", capacities_c);
    hidden.expect(kDLCPU, 2, {DType::bf16});
    const int64_t n = hidden.size(0), layers = stack_->num_layers();
    if (hidden.size(1) != config_.hidden) hidden.fail("must be [N, " + std::to_string(config_.hidden) + "]");
    for (TensorArg* t : {&positions, &lengths, &capacities}) {
      t->expect(kDLCPU, 1, {DType::i64});
      if (t->size(0) != n) t->fail("must have one entry per token (" + std::to_string(n) + ")");
    }
    cos.expect(kDLCPU, 2, {DType::bf16});
    sin.expect(kDLCPU, 2, {DType::bf16}).expect_same(cos);
    if (cos.size(1) != config_.head_dim) cos.fail("must have head_dim columns");
    for (int64_t i = 0; i < n; ++i)
      if (positions.data<int64_t>()[i] < 0 || positions.data<int64_t>()[i] >= cos.size(0))
        positions.fail("[" + std::to_string(i) + "] is outside the rotary table's " + std::to_string(cos.size(0)) + " rows");
    caches.expect(kDLCPU, 3, {DType::i64});
    if (caches.size(0) != n || caches.size(1) != layers || caches.size(2) != 2)
      caches.fail("must be [" + std::to_string(n) + ", " + std::to_string(layers) + ", 2], got " + caches.shape_text());
    moeweave::DecodeTokens tokens{n, hidden.data<uint16_t>(), positions.data<int64_t>(), cos.data<uint16_t>(),
                                  sin.data<uint16_t>(), caches.data<int64_t>(), lengths.data<int64_t>(),
                                  capacities.data<int64_t>()};
    std::unique_ptr<TensorArg> mask, adapters;
    if (mask_c) {
      mask = std::make_unique<TensorArg>(kOp, "mask", *mask_c);
      mask->expect(kDLCPU, 2, {DType::u8});
      for (int64_t i = 0; i < n; ++i)
        if (mask->size(0) != n || mask->size(1) < lengths.data<int64_t>()[i])
          mask->fail("must be [N, T] with T at least every token's cached length");
      tokens.mask = mask->data<uint8_t>();
      tokens.mask_stride = mask->size(1);
    }
    if (adapters_c) {
      adapters = std::make_unique<TensorArg>(kOp, "adapters", *adapters_c);
      adapters->expect(kDLCPU, 1, {DType::i32});
      if (adapters->size(0) != n) adapters->fail("must have one entry per token");
      tokens.adapters = adapters->data<int32_t>();
    }
    int64_t bad = 0;
    moeweave::Status status;
    {
      py::gil_scoped_release release;
      status = stack_->step(tokens, &bad);
    }
    if (status == -ERANGE && bad >= 0)
      lengths.fail("[" + std::to_string(bad) + "] leaves no room in its cache (capacity " +
                   std::to_string(capacities.data<int64_t>()[bad]) + ")");
    if (status == -ERANGE)
      throw py::value_error("DecodeStack: layer " + std::to_string(-1 - bad) +
                            ": an adapter or routed expert id is outside its table");
    if (status != 0) throw py::value_error("DecodeStack: malformed weights or an empty expert slot was routed to");
  }

 private:
  moeweave::DecodeConfig config_{};
  std::unique_ptr<moeweave::DecodeStack> stack_;
};

}  // namespace

namespace moeweave::bindings {

void bind_decode(py::module_& m) {
  py::class_<PyDecodeStack>(m, "DecodeStack", "Every decoder layer of a bf16 GQA or MLA model for one token per sequence")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, bool, int, double, const py::list&,
                    const std::optional<py::dict>&, int, double>(),
           py::arg("hidden"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("top_k"),
           py::arg("norm_topk_prob"), py::arg("qk_norm"), py::arg("eps"), py::arg("layers"), py::arg("mla") = py::none(),
           py::arg("router") = 0, py::arg("routed_scaling_factor") = 1.0)
      .def("step", &PyDecodeStack::step, py::arg("hidden"), py::arg("positions"), py::arg("cos"), py::arg("sin"),
           py::arg("caches"), py::arg("lengths"), py::arg("capacities"), py::arg("mask"), py::arg("adapters"),
           "Runs every layer for hidden [N, H] (updated in place), appending to the caches");
}

}  // namespace moeweave::bindings
