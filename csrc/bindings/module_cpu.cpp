// moeweave._C: the pybind11 face of moeweave_core. Each function checks its DLPack arguments,
// releases the GIL and calls the torch-free kernel; non-zero statuses become Python exceptions.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "bind_cpu.h"
#include "bone_args.h"
#include "moeweave/isa.h"
#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"
#include "tensor_arg.h"

namespace py = pybind11;
using moeweave::DType;
using moeweave::Isa;
using moeweave::bindings::TensorArg;

namespace {

void silu_mul(const py::capsule& gate_c, const py::capsule& up_c, const py::capsule& out_c) {
  TensorArg gate("silu_mul", "gate", gate_c), up("silu_mul", "up", up_c), out("silu_mul", "out", out_c);
  gate.expect(kDLCPU, -1, {DType::f32, DType::f16, DType::bf16});
  up.expect(kDLCPU, -1, {DType::f32, DType::f16, DType::bf16}).expect_same(gate);
  out.expect(kDLCPU, -1, {DType::f32, DType::f16, DType::bf16}).expect_same(gate);
  py::gil_scoped_release release;
  moeweave::silu_mul(gate.dtype(), gate.data<void>(), up.data<void>(), out.data<void>(), gate.numel());
}

void reroute(const py::capsule& ids_c, const py::capsule& adapter_c, const py::capsule& remap_c,
             const py::capsule& out_c) {
  TensorArg ids("reroute", "topk_ids", ids_c), adapter("reroute", "tok_adapter", adapter_c),
      remap("reroute", "remap", remap_c), out("reroute", "out", out_c);
  ids.expect(kDLCPU, 2, {DType::i32});
  adapter.expect(kDLCPU, 1, {DType::i32});
  remap.expect(kDLCPU, 2, {DType::i32});
  out.expect(kDLCPU, 2, {DType::i32}).expect_same(ids);
  const int64_t T = ids.size(0), K = ids.size(1), A = remap.size(0) - 1, E = remap.size(1);
  if (adapter.size(0) != T) adapter.fail("must have one entry per token (" + std::to_string(T) + "), got " + adapter.shape_text());
  if (A < 0) remap.fail("must have at least the identity row, got " + remap.shape_text());
  int64_t bad = -1;
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::reroute(ids.data<int32_t>(), adapter.data<int32_t>(), remap.data<int32_t>(),
                               out.data<int32_t>(), T, K, A, E, &bad);
  }
  if (status == 0) return;
  const int64_t t = bad / K, k = bad % K;
  const int32_t a = adapter.data<int32_t>()[t], id = ids.data<int32_t>()[bad];
  if (a < -1 || a >= A)
    adapter.fail("[" + std::to_string(t) + "] = " + std::to_string(a) + " is outside [-1, " + std::to_string(A) + ")");
  ids.fail("[" + std::to_string(t) + ", " + std::to_string(k) + "] = " + std::to_string(id) + " is outside [0, " + std::to_string(E) + ")");
}

// w [rows, cols] (rows may be strided), block [rows / r, r, r] fp32 -> out [rows, cols] = W'.
void bone_bat_form(const py::capsule& w_c, const py::capsule& block_c, const py::capsule& out_c) {
  TensorArg w("bone_bat_form", "w", w_c), block("bone_bat_form", "block", block_c), out("bone_bat_form", "out", out_c);
  const int64_t r = moeweave::bindings::bone_tile_block_size(kDLCPU, w, out, block);
  py::gil_scoped_release release;
  moeweave::bone_bat_form(w.dtype(), w.data<void>(), w.stride(0), block.data<float>(), r, w.size(0), w.size(1),
                          out.data<void>(), out.stride(0));
}

// w, g [rows, cols] (rows may be strided) -> dblock [rows / r, r, r] fp32.
void bone_bat_block_grad(const py::capsule& w_c, const py::capsule& g_c, const py::capsule& dblock_c) {
  TensorArg w("bone_bat_block_grad", "w", w_c), g("bone_bat_block_grad", "g", g_c),
      dblock("bone_bat_block_grad", "dblock", dblock_c);
  const int64_t r = moeweave::bindings::bone_tile_block_size(kDLCPU, w, g, dblock);
  py::gil_scoped_release release;
  moeweave::bone_bat_block_grad(w.dtype(), w.data<void>(), w.stride(0), g.data<void>(), g.stride(0), r, w.size(0),
                                w.size(1), dblock.data<float>());
}

// One attention problem's checked arguments: q [B, nH, S, Dk], k [B, nKV, T, Dk], v [B, nKV, T,
// Dv] (views: last dim contiguous), mask [B, S, T] bool, out [B, nH, S, Dv]. Its tensors stay
// held while it lives; `op` names the caller in errors.
struct AttentionProblem {
  TensorArg q, k, v, mask, out;
  moeweave::AttentionArgs args;

  AttentionProblem(const char* op, const py::capsule& q_c, const py::capsule& k_c, const py::capsule& v_c,
                   const py::capsule& mask_c, const py::capsule& out_c, double scale)
      : q(op, "q", q_c), k(op, "k", k_c), v(op, "v", v_c), mask(op, "mask", mask_c), out(op, "out", out_c) {
    q.expect(kDLCPU, 4, {DType::f32, DType::f16, DType::bf16});
    k.expect_rows(kDLCPU, 4, {q.dtype()});
    v.expect_rows(kDLCPU, 4, {q.dtype()});
    mask.expect(kDLCPU, 3, {DType::u8});
    out.expect(kDLCPU, 4, {q.dtype()});
    const int64_t B = q.size(0), H = q.size(1), S = q.size(2), KV = k.size(1), T = k.size(2);
    auto expect_shape = [](const TensorArg& t, std::vector<int64_t> shape) {
      std::ostringstream s;
      for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "[") << shape[i];
      if (t.shape() != shape) t.fail("must have shape " + s.str() + "], got " + t.shape_text());
    };
    expect_shape(k, {B, KV, T, q.size(3)});
    expect_shape(v, {B, KV, T, v.size(3)});
    expect_shape(mask, {B, S, T});
    expect_shape(out, {B, H, S, v.size(3)});
    if (KV == 0 || H % KV) k.fail("has " + std::to_string(KV) + " heads, which must divide the " + std::to_string(H) + " query heads");
    args = {q.dtype(), q.data<void>(), k.data<void>(), v.data<void>(), mask.data<uint8_t>(),
            out.data<void>(), B, H, KV, S, T, q.size(3), v.size(3),
            {k.stride(0), k.stride(1), k.stride(2)}, {v.stride(0), v.stride(1), v.stride(2)},
            static_cast<float>(scale)};
  }
};

void attention(const py::capsule& q_c, const py::capsule& k_c, const py::capsule& v_c, const py::capsule& mask_c,
               const py::capsule& out_c, double scale) {
  const AttentionProblem problem("attention", q_c, k_c, v_c, mask_c, out_c, scale);
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::attention(problem.args);
  }
  if (status != 0) throw py::value_error("attention: invalid arguments");
}

// Many independent attention problems (q, k, v, mask, out as above, each its own shapes) in one
// parallel region: the decoding sequences of a ragged batch, each over its own cache.
void attention_batch(const std::vector<std::tuple<py::capsule, py::capsule, py::capsule, py::capsule, py::capsule>>& problems,
                     double scale) {
  std::vector<std::unique_ptr<AttentionProblem>> held;
  std::vector<moeweave::AttentionArgs> args;
  for (const auto& [q, k, v, mask, out] : problems) {
    held.push_back(std::make_unique<AttentionProblem>("attention_batch", q, k, v, mask, out, scale));
    args.push_back(held.back()->args);
  }
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::attention_batch(args.data(), int64_t(args.size()));
  }
  if (status != 0) throw py::value_error("attention_batch: invalid arguments");
}

// x [..., H], weight [H], out like x.
void rms_norm(const py::capsule& x_c, const py::capsule& weight_c, const py::capsule& out_c, double eps) {
  TensorArg x("rms_norm", "x", x_c), weight("rms_norm", "weight", weight_c), out("rms_norm", "out", out_c);
  x.expect(kDLCPU, -1, {DType::f32, DType::f16, DType::bf16});
  weight.expect(kDLCPU, 1, {x.dtype()});
  out.expect(kDLCPU, -1, {x.dtype()}).expect_same(x);
  const int64_t h = x.ndim() ? x.size(x.ndim() - 1) : 1;
  if (weight.size(0) != h) weight.fail("must have " + std::to_string(h) + " entries (x's last dim), got " + weight.shape_text());
  if (h == 0) return;
  py::gil_scoped_release release;
  moeweave::rms_norm(x.dtype(), x.data<void>(), weight.data<void>(), out.data<void>(), x.numel() / h, h,
                     static_cast<float>(eps));
}

// x [B, S, H, D], cos and sin [S, D], out like x.
void rope(const py::capsule& x_c, const py::capsule& cos_c, const py::capsule& sin_c, const py::capsule& out_c) {
  TensorArg x("rope", "x", x_c), cos("rope", "cos", cos_c), sin("rope", "sin", sin_c), out("rope", "out", out_c);
  x.expect(kDLCPU, 4, {DType::f32, DType::f16, DType::bf16});
  cos.expect(kDLCPU, 2, {x.dtype()});
  sin.expect(kDLCPU, 2, {x.dtype()}).expect_same(cos);
  out.expect(kDLCPU, 4, {x.dtype()}).expect_same(x);
  if (cos.size(0) != x.size(1) || cos.size(1) != x.size(3))
    cos.fail("must be [" + std::to_string(x.size(1)) + ", " + std::to_string(x.size(3)) + "] (x's S and D), got " + cos.shape_text());
  if (x.size(3) % 2) x.fail("must have an even head dim, got " + x.shape_text());
  if (x.numel() == 0) return;
  py::gil_scoped_release release;
  moeweave::rope(x.dtype(), x.data<void>(), cos.data<void>(), sin.data<void>(), out.data<void>(), x.size(0), x.size(1),
                 x.size(2), x.size(3));
}

Isa parse_isa(const std::string& name) {
  for (int i = 0; i < moeweave::kNumIsas; ++i)
    if (name == moeweave::isa_name(static_cast<Isa>(i))) return static_cast<Isa>(i);
  throw py::value_error("unknown ISA '" + name + "': expected one of scalar, avx2, avx512");
}

void set_isa(const std::string& name) {
  const Isa isa = parse_isa(name);
  if (moeweave::set_isa(isa) != 0)
    throw py::value_error(std::string("this CPU does not support the '") + name + "' kernels; the best it supports is '" +
                          moeweave::isa_name(moeweave::best_supported_isa()) + "'");
}

py::list supported_isas() {
  py::list names;
  for (int i = 0; i < moeweave::kNumIsas; ++i)
    if (moeweave::isa_supported(static_cast<Isa>(i))) names.append(moeweave::isa_name(static_cast<Isa>(i)));
  return names;
}

// (available, errno): errno is 0 when io_uring works here.
py::tuple io_uring_status() {
  const int status = moeweave::io_uring_probe();
  return py::make_tuple(status == 0, -status);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "moeweave's native CPU kernels (torch-free; tensors arrive as DLPack capsules)";
  m.def("silu_mul", &silu_mul, py::arg("gate"), py::arg("up"), py::arg("out"),
        "out = silu(gate) * up, elementwise (contiguous CPU tensors of one float dtype)");
  m.def("reroute", &reroute, py::arg("topk_ids"), py::arg("tok_adapter"), py::arg("remap"), py::arg("out"),
        "out[t, k] = remap[tok_adapter[t] + 1, topk_ids[t, k]] (int32)");
  m.def("bone_bat_form", &bone_bat_form, py::arg("w"), py::arg("block"), py::arg("out"),
        "out = Bone's block-affine W' of a block-aligned tile w: W_ij (I + B_i) + B_i per r x r block");
  m.def("bone_bat_block_grad", &bone_bat_block_grad, py::arg("w"), py::arg("g"), py::arg("dblock"),
        "dblock[i] = sum_j (W_ij + I)^T G_ij over a block-aligned tile (fp32)");
  m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("out"),
        py::arg("scale"), "Grouped-query attention of q over (cached) k and v, written to out");
  m.def("attention_batch", &attention_batch, py::arg("problems"), py::arg("scale"),
        "attention over many (q, k, v, mask, out) problems of their own shapes, in one parallel region");
  m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("eps"),
        "RMSNorm of x's last dim with the roundings of transformers");
  m.def("rope", &rope, py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("out"),
        "Rotary position embedding (half-split) with transformers' roundings");
  m.def("supported_isas", &supported_isas, "ISA levels this CPU can run, lowest first");
  m.def("current_isa", [] { return std::string(moeweave::isa_name(moeweave::current_isa())); });
  m.def("set_isa", &set_isa, py::arg("name"), "Dispatch CPU kernels to this ISA level");
  m.def("avx512_bf16_supported", &moeweave::avx512_bf16_supported,
        "Whether the CPU has AVX512-BF16, which attention over bf16 caches uses at the avx512 level");
  m.def("num_threads", &moeweave::num_threads, "Threads of moeweave's native pool");
  m.def("set_num_threads", &moeweave::set_num_threads, py::arg("n"));
  m.def("io_uring_status", &io_uring_status, "(available, errno) from an io_uring_setup probe");
  moeweave::bindings::bind_quant(m);
  moeweave::bindings::bind_io(m);
  moeweave::bindings::bind_decode(m);
}
