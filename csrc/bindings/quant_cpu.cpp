// Bindings of the quantised matmul and the fused MoE expert op (part of moeweave._C).
// A quantised matrix crosses as its tensors (packed, scales, zeros) plus its integer format
// fields; the MoE op's expert table crosses as an int64 tensor of raw pointers, which is what
// lets an expert cache or adapter pool hand the kernel memory of its own.
#include <string>

#include "bind_cpu.h"
#include "quant_args.h"

namespace py = pybind11;
using moeweave::DType;
using moeweave::bindings::QuantMatrixArg;
using moeweave::bindings::TensorArg;

namespace {

void bind_quant_matmul(const py::capsule& packed_c, const std::optional<py::capsule>& scales_c,
                       const std::optional<py::capsule>& zeros_c, int64_t n, int64_t k, int bits, int group_size,
                       const py::capsule& x_c, const py::capsule& y_c) {
  const QuantMatrixArg w("quant_matmul", kDLCPU, packed_c, scales_c, zeros_c, n, k, bits, group_size);
  TensorArg x("quant_matmul", "x", x_c), y("quant_matmul", "y", y_c);
  moeweave::bindings::check_matmul_io(x, y, kDLCPU, n, k);
  const DType x_dtype = x.dtype();
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::quant_matmul(w.matrix, x_dtype, x.data<void>(), x.size(0), y.data<float>());
  }
  if (status != 0) throw py::value_error("quant_matmul: unsupported format (bits " + std::to_string(bits) + ")");
}

void bind_quant_matmul_t(const py::capsule& packed_c, const std::optional<py::capsule>& scales_c,
                         const std::optional<py::capsule>& zeros_c, int64_t n, int64_t k, int bits, int group_size,
                         const py::capsule& dy_c, const py::capsule& dx_c) {
  const QuantMatrixArg w("quant_matmul_t", kDLCPU, packed_c, scales_c, zeros_c, n, k, bits, group_size);
  TensorArg dy("quant_matmul_t", "dy", dy_c), dx("quant_matmul_t", "dx", dx_c);
  dy.expect(kDLCPU, 2, {DType::f32});
  moeweave::bindings::check_matmul_io(dy, dx, kDLCPU, k, n);  // dy plays x (n columns), dx plays y (k)
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::quant_matmul_t(w.matrix, dy.data<float>(), dy.size(0), dx.data<float>());
  }
  if (status != 0) throw py::value_error("quant_matmul_t: unsupported format (bits " + std::to_string(bits) + ")");
}

void bind_quant_dequantize_bf16(const py::capsule& packed_c, const std::optional<py::capsule>& scales_c,
                                const std::optional<py::capsule>& zeros_c, int64_t n, int64_t k, int bits,
                                int group_size, int64_t row_begin, const py::capsule& out_c) {
  const char* op = "quant_dequantize_bf16";
  const QuantMatrixArg w(op, kDLCPU, packed_c, scales_c, zeros_c, n, k, bits, group_size);
  const TensorArg out(op, "out", out_c);
  const int64_t row_end = moeweave::bindings::dequantize_row_end(op, out, kDLCPU, n, k, bits, row_begin);
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::quant_dequantize_bf16(w.matrix, row_begin, row_end, out.data<uint16_t>());
  }
  if (status != 0) throw py::value_error(std::string(op) + ": unsupported format (bits " + std::to_string(bits) + ")");
}

// Quantises w into the tensors of a packed matrix the caller allocated (validated as
// quant_matmul validates a weight: shapes that match n, k, bits and group_size).
void bind_quant_quantize(const py::capsule& w_c, int bits, int group_size, bool sym,
                         const std::vector<float>& clip_ratios, const py::capsule& packed_c,
                         const py::capsule& scales_c, const std::optional<py::capsule>& zeros_c) {
  const char* op = "quant_quantize";
  if (clip_ratios.empty()) throw py::value_error(std::string(op) + ": needs at least one clip ratio");
  TensorArg w(op, "w", w_c);
  w.expect_rows(kDLCPU, 2, {DType::f32, DType::f16, DType::bf16});
  const QuantMatrixArg out(op, kDLCPU, packed_c, scales_c, zeros_c, w.size(0), w.size(1), bits, group_size);
  if (sym == bool(out.zeros)) out.packed->fail(sym ? "takes no 'zeros' when symmetric" : "needs 'zeros' when asymmetric");
  const int64_t ldw = w.size(0) > 1 ? w.stride(0) : w.size(1);
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::quant_quantize(w.dtype(), w.data<void>(), ldw, w.size(0), w.size(1), bits, group_size, sym,
                                      clip_ratios.data(), int(clip_ratios.size()), out.matrix.scale_dtype,
                                      out.packed->data<uint8_t>(), out.scales->data<void>(),
                                      sym ? nullptr : out.zeros->data<void>());
  }
  if (status != 0) throw py::value_error(std::string(op) + ": unsupported format");
}

// Turns moe_experts' range and shape errors into exceptions that name the offending entry.
void raise_moe_status(moeweave::Status status, int64_t bad, const TensorArg& table, const TensorArg& x,
                      const TensorArg& ids) {
  const int64_t E = table.size(0);
  if (status == -ERANGE)
    ids.fail("[" + std::to_string(bad / ids.size(1)) + ", " + std::to_string(bad % ids.size(1)) + "] = " +
             std::to_string(ids.data<int32_t>()[bad]) + " is outside [0, " + std::to_string(E) + ")");
  if (status != 0)
    table.fail("slot " + std::to_string(bad) + " has projections whose shapes or formats do not fit x (hidden size " +
               std::to_string(x.size(1)) + ") and the other experts");
}

void bind_moe_experts(const py::capsule& table_c, const py::capsule& x_c, const py::capsule& ids_c,
                      const py::capsule& weights_c, const py::capsule& y_c) {
  TensorArg table("moe_experts", "expert_table", table_c), x("moe_experts", "x", x_c),
      ids("moe_experts", "topk_ids", ids_c), weights("moe_experts", "topk_weights", weights_c), y("moe_experts", "y", y_c);
  const std::vector<moeweave::ExpertSlot> slots = moeweave::bindings::expert_slots(table, x, ids, weights, y, kDLCPU);
  const DType x_dtype = x.dtype();
  int64_t bad = -1;
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::moe_experts(slots.data(), table.size(0), x_dtype, x.data<void>(), x.size(0), x.size(1), ids.data<int32_t>(),
                                   weights.data<float>(), ids.size(1), y.data<float>(), &bad);
  }
  raise_moe_status(status, bad, table, x, ids);
}

void bind_moe_experts_backward(const py::capsule& table_c, const py::capsule& x_c, const py::capsule& ids_c,
                               const py::capsule& weights_c, const py::capsule& dy_c, const py::capsule& dx_c,
                               const py::capsule& dweights_c) {
  const char* op = "moe_experts_backward";
  TensorArg table(op, "expert_table", table_c), x(op, "x", x_c), ids(op, "topk_ids", ids_c),
      weights(op, "topk_weights", weights_c), dy(op, "dy", dy_c), dx(op, "dx", dx_c),
      dweights(op, "dweights", dweights_c);
  const std::vector<moeweave::ExpertSlot> slots = moeweave::bindings::expert_slots(table, x, ids, weights, dy, kDLCPU);
  dx.expect(kDLCPU, 2, {DType::f32}).expect_same(dy);
  dweights.expect(kDLCPU, 2, {DType::f32}).expect_same(weights);
  const DType x_dtype = x.dtype();
  int64_t bad = -1;
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::moe_experts_backward(slots.data(), table.size(0), x_dtype, x.data<void>(), x.size(0),
                                            x.size(1), ids.data<int32_t>(), weights.data<float>(), ids.size(1),
                                            dy.data<float>(), dx.data<float>(), dweights.data<float>(), &bad);
  }
  raise_moe_status(status, bad, table, x, ids);
}

}  // namespace

namespace moeweave::bindings {

void bind_quant(py::module_& m) {
  m.def("quant_matmul", &::bind_quant_matmul, py::arg("packed"), py::arg("scales"), py::arg("zeros"), py::arg("n"),
        py::arg("k"), py::arg("bits"), py::arg("group_size"), py::arg("x"), py::arg("y"),
        "y [m, n] fp32 = x [m, k] W^T for a packed quantised (or bf16, bits=16) W");
  m.def("moe_experts", &::bind_moe_experts, py::arg("expert_table"), py::arg("x"), py::arg("topk_ids"),
        py::arg("topk_weights"), py::arg("y"), "The fused routed-expert stage of an MoE layer");
  m.def("quant_matmul_t", &::bind_quant_matmul_t, py::arg("packed"), py::arg("scales"), py::arg("zeros"),
        py::arg("n"), py::arg("k"), py::arg("bits"), py::arg("group_size"), py::arg("dy"), py::arg("dx"),
        "dx [m, k] fp32 = dy [m, n] fp32 W, on the packed W (the gradient of quant_matmul)");
  m.def("quant_dequantize_bf16", &::bind_quant_dequantize_bf16, py::arg("packed"), py::arg("scales"),
        py::arg("zeros"), py::arg("n"), py::arg("k"), py::arg("bits"), py::arg("group_size"), py::arg("row_begin"),
        py::arg("out"), "out [rows, k] bf16 = rows [row_begin, row_begin + rows) of the packed W, dequantised");
  m.def("quant_quantize", &::bind_quant_quantize, py::arg("w"), py::arg("bits"), py::arg("group_size"), py::arg("sym"),
        py::arg("clip_ratios"), py::arg("packed"), py::arg("scales"), py::arg("zeros"),
        "Quantises w [n, k] into a packed matrix's tensors (allocated by the caller), each group at the clip "
        "ratio of least squared error");
  m.def("moe_experts_backward", &::bind_moe_experts_backward, py::arg("expert_table"), py::arg("x"),
        py::arg("topk_ids"), py::arg("topk_weights"), py::arg("dy"), py::arg("dx"), py::arg("dweights"),
        "The gradients of moe_experts with respect to x and topk_weights");
}

}  // namespace moeweave::bindings
