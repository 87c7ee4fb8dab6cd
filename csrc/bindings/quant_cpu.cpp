// Bindings of the quantised matmul and the fused MoE expert op (part of moeweave._C).
// A quantised matrix crosses as its tensors (packed, scales, zeros) plus its integer format
// fields; the MoE op's expert table crosses as an int64 tensor of raw pointers, which is what
// lets an expert cache or adapter pool hand the kernel memory of its own.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "bind_cpu.h"
#include "moeweave/kernels_cpu.h"
#include "tensor_arg.h"

namespace py = pybind11;
using moeweave::DType;
using moeweave::QuantMatrix;
using moeweave::bindings::TensorArg;

namespace {

constexpr int kTableFields = 8;  // packed, scales, zeros, n, k, bits, group_size, scale dtype

void bind_quant_matmul(const py::capsule& packed_c, const std::optional<py::capsule>& scales_c, const std::optional<py::capsule>& zeros_c,
                  int64_t n, int64_t k, int bits, int group_size, const py::capsule& x_c, const py::capsule& y_c) {
  TensorArg packed("quant_matmul", "packed", packed_c), x("quant_matmul", "x", x_c), y("quant_matmul", "y", y_c);
  x.expect(kDLCPU, 2, {DType::f32, DType::bf16});
  y.expect(kDLCPU, 2, {DType::f32});
  if (x.size(1) != k) x.fail("must have " + std::to_string(k) + " columns, got " + x.shape_text());
  if (y.size(0) != x.size(0) || y.size(1) != n) y.fail("must be [" + std::to_string(x.size(0)) + ", " + std::to_string(n) + "], got " + y.shape_text());
  QuantMatrix w{};
  w.n = n, w.k = k, w.bits = bits, w.group_size = group_size;
  if (bits == 16) {
    packed.expect(kDLCPU, 2, {DType::bf16});
    if (packed.size(0) != n || packed.size(1) != k) packed.fail("must be [n, k] for a bf16 matrix, got " + packed.shape_text());
    w.packed = packed.data<uint8_t>();
  } else {
    packed.expect(kDLCPU, 3, {DType::u8});
    if (!scales_c) throw py::value_error("quant_matmul: a quantised matrix needs 'scales'");
    TensorArg scales("quant_matmul", "scales", *scales_c);
    scales.expect(kDLCPU, 3, {DType::f32, DType::f16, DType::bf16});
    const int64_t tiles = moeweave::quant_padded(n, moeweave::kQuantTileRows) / moeweave::kQuantTileRows;
    const int64_t kp = group_size > 0 ? moeweave::quant_padded(k, group_size) : 0;
    if (packed.numel() != tiles * (kp / moeweave::kQuantUnitCols) * moeweave::quant_unit_bytes(bits))
      packed.fail("has " + std::to_string(packed.numel()) + " bytes, which does not match the format");
    if (scales.numel() != tiles * (group_size > 0 ? kp / group_size : 0) * moeweave::kQuantTileRows)
      scales.fail("has the wrong number of elements for the format");
    w.packed = packed.data<uint8_t>();
    w.scales = scales.data<void>();
    w.scale_dtype = scales.dtype();
    if (zeros_c) {
      TensorArg zeros("quant_matmul", "zeros", *zeros_c);
      zeros.expect(kDLCPU, 3, {DType::f32, DType::f16, DType::bf16}).expect_same(scales);
      w.zeros = zeros.data<void>();
    }
  }
  const DType x_dtype = x.dtype();
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::quant_matmul(w, x_dtype, x.data<void>(), x.size(0), y.data<float>());
  }
  if (status != 0) throw py::value_error("quant_matmul: unsupported format (bits " + std::to_string(bits) + ", group_size " + std::to_string(group_size) + ")");
}

void bind_moe_experts(const py::capsule& table_c, const py::capsule& x_c, const py::capsule& ids_c,
                 const py::capsule& weights_c, const py::capsule& y_c) {
  TensorArg table("moe_experts", "expert_table", table_c), x("moe_experts", "x", x_c), ids("moe_experts", "topk_ids", ids_c),
      weights("moe_experts", "topk_weights", weights_c), y("moe_experts", "y", y_c);
  table.expect(kDLCPU, 3, {DType::i64});
  x.expect(kDLCPU, 2, {DType::f32, DType::bf16});
  ids.expect(kDLCPU, 2, {DType::i32});
  weights.expect(kDLCPU, 2, {DType::f32});
  y.expect(kDLCPU, 2, {DType::f32});
  if (table.size(1) != 3 || table.size(2) != kTableFields) table.fail("must be [E, 3, 8], got " + table.shape_text());
  if (weights.shape() != ids.shape()) weights.fail("must have the shape of 'topk_ids' " + ids.shape_text() + ", got " + weights.shape_text());
  if (ids.size(0) != x.size(0)) ids.fail("must have one row per token (" + std::to_string(x.size(0)) + "), got " + ids.shape_text());
  if (y.shape() != x.shape()) y.fail("must have the shape of 'x' " + x.shape_text() + ", got " + y.shape_text());
  const int64_t E = table.size(0);
  const int64_t* fields = table.data<int64_t>();
  std::vector<moeweave::ExpertSlot> slots(E);
  for (int64_t e = 0; e < E; ++e) {
    QuantMatrix* projections[3] = {&slots[e].gate, &slots[e].up, &slots[e].down};
    for (int p = 0; p < 3; ++p) {
      const int64_t* f = fields + (e * 3 + p) * kTableFields;
      *projections[p] = QuantMatrix{reinterpret_cast<const uint8_t*>(f[0]), reinterpret_cast<const void*>(f[1]),
                                    reinterpret_cast<const void*>(f[2]), f[3], f[4], int32_t(f[5]), int32_t(f[6]),
                                    static_cast<DType>(f[7])};
    }
  }
  const DType x_dtype = x.dtype();
  int64_t bad = -1;
  moeweave::Status status;
  {
    py::gil_scoped_release release;
    status = moeweave::moe_experts(slots.data(), E, x_dtype, x.data<void>(), x.size(0), x.size(1), ids.data<int32_t>(),
                                   weights.data<float>(), ids.size(1), y.data<float>(), &bad);
  }
  if (status == -ERANGE)
    ids.fail("[" + std::to_string(bad / ids.size(1)) + ", " + std::to_string(bad % ids.size(1)) + "] = " +
             std::to_string(ids.data<int32_t>()[bad]) + " is outside [0, " + std::to_string(E) + ")");
  if (status != 0)
    table.fail("slot " + std::to_string(bad) + " has projections whose shapes or formats do not fit x (hidden size " +
               std::to_string(x.size(1)) + ") and the other experts");
}

}  // namespace

namespace moeweave::bindings {

void bind_quant(py::module_& m) {
  m.def("quant_matmul", &::bind_quant_matmul, py::arg("packed"), py::arg("scales"), py::arg("zeros"), py::arg("n"), py::arg("k"),
        py::arg("bits"), py::arg("group_size"), py::arg("x"), py::arg("y"),
        "y [m, n] fp32 = x [m, k] W^T for a packed quantised (or bf16, bits=16) W");
  m.def("moe_experts", &::bind_moe_experts, py::arg("expert_table"), py::arg("x"), py::arg("topk_ids"), py::arg("topk_weights"),
        py::arg("y"), "The fused routed-expert stage of an MoE layer");
}

}  // namespace moeweave::bindings
