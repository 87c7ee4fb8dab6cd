// moeweave._C_cuda: the pybind11 face of the CUDA kernels. Kernels are enqueued on the caller's
// stream (torch.cuda.current_stream().cuda_stream) and never synchronise the host.
#include <pybind11/pybind11.h>

#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bone_args.h"
#include "moeweave/kernels_cuda.h"
#include "quant_args.h"
#include "tensor_arg.h"

namespace py = pybind11;
using moeweave::DType;
using moeweave::bindings::TensorArg;

namespace {

void* as_stream(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

void check_launch(const char* op, moeweave::Status status) {
  if (status != 0) throw std::runtime_error(std::string(op) + ": CUDA launch failed: " + moeweave::cuda::last_error());
}

void silu_mul(const py::capsule& gate_c, const py::capsule& up_c, const py::capsule& out_c, uintptr_t stream) {
  TensorArg gate("silu_mul", "gate", gate_c), up("silu_mul", "up", up_c), out("silu_mul", "out", out_c);
  gate.expect(kDLCUDA, -1, {DType::f32, DType::f16, DType::bf16});
  up.expect(kDLCUDA, -1, {DType::f32, DType::f16, DType::bf16}).expect_same(gate);
  out.expect(kDLCUDA, -1, {DType::f32, DType::f16, DType::bf16}).expect_same(gate);
  check_launch("silu_mul", moeweave::cuda::silu_mul(gate.dtype(), gate.data<void>(), up.data<void>(),
                                                    out.data<void>(), gate.numel(), as_stream(stream)));
}

void reroute(const py::capsule& ids_c, const py::capsule& adapter_c, const py::capsule& remap_c,
             const py::capsule& out_c, uintptr_t stream) {
  TensorArg ids("reroute", "topk_ids", ids_c), adapter("reroute", "tok_adapter", adapter_c),
      remap("reroute", "remap", remap_c), out("reroute", "out", out_c);
  ids.expect(kDLCUDA, 2, {DType::i32});
  adapter.expect(kDLCUDA, 1, {DType::i32});
  remap.expect(kDLCUDA, 2, {DType::i32});
  out.expect(kDLCUDA, 2, {DType::i32}).expect_same(ids);
  const int64_t T = ids.size(0), K = ids.size(1), A = remap.size(0) - 1, E = remap.size(1);
  if (adapter.size(0) != T) adapter.fail("must have one entry per token (" + std::to_string(T) + "), got " + adapter.shape_text());
  if (A < 0) remap.fail("must have at least the identity row, got " + remap.shape_text());
  check_launch("reroute", moeweave::cuda::reroute(ids.data<int32_t>(), adapter.data<int32_t>(), remap.data<int32_t>(),
                                                  out.data<int32_t>(), T, K, A, E, as_stream(stream)));
}

void bone_bat_form(const py::capsule& w_c, const py::capsule& block_c, const py::capsule& out_c, uintptr_t stream) {
  TensorArg w("bone_bat_form", "w", w_c), block("bone_bat_form", "block", block_c), out("bone_bat_form", "out", out_c);
  const int64_t r = moeweave::bindings::bone_tile_block_size(kDLCUDA, w, out, block);
  check_launch("bone_bat_form", moeweave::cuda::bone_bat_form(w.dtype(), w.data<void>(), w.stride(0), block.data<float>(),
                                                              r, w.size(0), w.size(1), out.data<void>(), out.stride(0),
                                                              as_stream(stream)));
}

void bone_bat_block_grad(const py::capsule& w_c, const py::capsule& g_c, const py::capsule& dblock_c, uintptr_t stream) {
  TensorArg w("bone_bat_block_grad", "w", w_c), g("bone_bat_block_grad", "g", g_c),
      dblock("bone_bat_block_grad", "dblock", dblock_c);
  const int64_t r = moeweave::bindings::bone_tile_block_size(kDLCUDA, w, g, dblock);
  check_launch("bone_bat_block_grad",
               moeweave::cuda::bone_bat_block_grad(w.dtype(), w.data<void>(), w.stride(0), g.data<void>(), g.stride(0), r,
                                                   w.size(0), w.size(1), dblock.data<float>(), as_stream(stream)));
}

void quant_matmul(const py::capsule& packed_c, const std::optional<py::capsule>& scales_c,
                  const std::optional<py::capsule>& zeros_c, int64_t n, int64_t k, int bits, int group_size,
                  const py::capsule& x_c, const py::capsule& y_c, uintptr_t stream) {
  const moeweave::bindings::QuantMatrixArg w("quant_matmul", kDLCUDA, packed_c, scales_c, zeros_c, n, k, bits, group_size);
  TensorArg x("quant_matmul", "x", x_c), y("quant_matmul", "y", y_c);
  moeweave::bindings::check_matmul_io(x, y, kDLCUDA, n, k);
  check_launch("quant_matmul", moeweave::cuda::quant_matmul(w.matrix, x.dtype(), x.data<void>(), x.size(0),
                                                            y.data<float>(), as_stream(stream)));
}

void quant_matmul_t(const py::capsule& packed_c, const std::optional<py::capsule>& scales_c,
                    const std::optional<py::capsule>& zeros_c, int64_t n, int64_t k, int bits, int group_size,
                    const py::capsule& dy_c, const py::capsule& dx_c, uintptr_t stream) {
  const moeweave::bindings::QuantMatrixArg w("quant_matmul_t", kDLCUDA, packed_c, scales_c, zeros_c, n, k, bits,
                                             group_size);
  TensorArg dy("quant_matmul_t", "dy", dy_c), dx("quant_matmul_t", "dx", dx_c);
  dy.expect(kDLCUDA, 2, {DType::f32});
  moeweave::bindings::check_matmul_io(dy, dx, kDLCUDA, k, n);  // dy plays x (n columns), dx plays y (k)
  check_launch("quant_matmul_t", moeweave::cuda::quant_matmul_t(w.matrix, dy.data<float>(), dy.size(0),
                                                                dx.data<float>(), as_stream(stream)));
}

void quant_dequantize_bf16(const py::capsule& packed_c, const std::optional<py::capsule>& scales_c,
                           const std::optional<py::capsule>& zeros_c, int64_t n, int64_t k, int bits, int group_size,
                           int64_t row_begin, const py::capsule& out_c, uintptr_t stream) {
  const char* op = "quant_dequantize_bf16";
  const moeweave::bindings::QuantMatrixArg w(op, kDLCUDA, packed_c, scales_c, zeros_c, n, k, bits, group_size);
  const TensorArg out(op, "out", out_c);
  const int64_t row_end = moeweave::bindings::dequantize_row_end(op, out, kDLCUDA, n, k, bits, row_begin);
  check_launch(op, moeweave::cuda::quant_dequantize_bf16(w.matrix, row_begin, row_end, out.data<uint16_t>(),
                                                         as_stream(stream)));
}

// slots_buffer: a CUDA uint8 tensor of E * expert_slot_bytes into which the table is copied when
// upload_slots (a host-to-device copy, which CUDA graphs cannot capture), else holding that copy
// from an earlier call; workspace: a CUDA fp32 tensor of T * K * (I + H) elements.
void moe_experts(const py::capsule& table_c, const py::capsule& x_c, const py::capsule& ids_c, const py::capsule& weights_c,
                 const py::capsule& y_c, const py::capsule& slots_c, bool upload_slots, const py::capsule& workspace_c,
                 int64_t inter, uintptr_t stream) {
  TensorArg table("moe_experts", "expert_table", table_c), x("moe_experts", "x", x_c),
      ids("moe_experts", "topk_ids", ids_c), weights("moe_experts", "topk_weights", weights_c), y("moe_experts", "y", y_c),
      slots_buffer("moe_experts", "slots_buffer", slots_c), workspace("moe_experts", "workspace", workspace_c);
  const std::vector<moeweave::ExpertSlot> slots = moeweave::bindings::expert_slots(table, x, ids, weights, y, kDLCUDA);
  slots_buffer.expect(kDLCUDA, 1, {DType::u8});
  workspace.expect(kDLCUDA, 1, {DType::f32});
  const int64_t T = x.size(0), H = x.size(1), K = ids.size(1), bytes = int64_t(slots.size() * sizeof(moeweave::ExpertSlot));
  if (slots_buffer.numel() != bytes) slots_buffer.fail("must hold " + std::to_string(bytes) + " bytes");
  if (workspace.numel() < T * K * (inter + H)) workspace.fail("is too small");
  if (upload_slots)
    check_launch("moe_experts",
                 moeweave::cuda::copy_to_device(slots_buffer.data<void>(), slots.data(), bytes, as_stream(stream)));
  check_launch("moe_experts", moeweave::cuda::moe_experts(slots_buffer.data<moeweave::ExpertSlot>(), int64_t(slots.size()),
                                                          x.dtype(), x.data<void>(), T, H, inter, ids.data<int32_t>(),
                                                          weights.data<float>(), K, y.data<float>(),
                                                          workspace.data<float>(), as_stream(stream)));
}

// The device expert pool, owned by its Python object (freed with it).
class DeviceExpertPool {
 public:
  DeviceExpertPool(int device, int64_t slot_bytes, int64_t capacity) {
    if (slot_bytes <= 0 || capacity <= 0) throw std::invalid_argument("DeviceExpertPool: sizes must be positive");
    check("create", moeweave::cuda::pool_create(device, slot_bytes, capacity, &pool_));
    capacity_ = capacity;
  }
  ~DeviceExpertPool() { moeweave::cuda::pool_destroy(pool_); }
  DeviceExpertPool(const DeviceExpertPool&) = delete;
  DeviceExpertPool& operator=(const DeviceExpertPool&) = delete;

  void map(int64_t slot) { check("map", moeweave::cuda::pool_map(pool_, slot)); }
  void unmap(int64_t slot) { check("unmap", moeweave::cuda::pool_unmap(pool_, slot)); }
  uint64_t address() const { return moeweave::cuda::pool_address(pool_); }
  int64_t stride() const { return moeweave::cuda::pool_stride(pool_); }
  int64_t capacity() const { return capacity_; }
  int64_t mapped_bytes() const { return moeweave::cuda::pool_mapped_bytes(pool_); }

 private:
  static void check(const char* what, moeweave::Status status) {
    if (status == 0) return;
    if (status == -ENOSYS) throw std::runtime_error("DeviceExpertPool: the CUDA driver has no virtual-memory entry points");
    if (status == -EINVAL) throw std::invalid_argument(std::string("DeviceExpertPool.") + what + ": slot out of range or in the wrong state");
    throw std::runtime_error(std::string("DeviceExpertPool.") + what + ": CUresult " + std::to_string(-status));
  }
  moeweave::cuda::DevicePool* pool_ = nullptr;
  int64_t capacity_ = 0;
};

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "moeweave's CUDA kernels (torch-free; tensors arrive as DLPack capsules)";
  m.def("silu_mul", &silu_mul, py::arg("gate"), py::arg("up"), py::arg("out"), py::arg("stream"));
  m.def("bone_bat_form", &bone_bat_form, py::arg("w"), py::arg("block"), py::arg("out"), py::arg("stream"));
  m.def("bone_bat_block_grad", &bone_bat_block_grad, py::arg("w"), py::arg("g"), py::arg("dblock"), py::arg("stream"));
  m.def("reroute", &reroute, py::arg("topk_ids"), py::arg("tok_adapter"), py::arg("remap"), py::arg("out"),
        py::arg("stream"));
  m.def("quant_matmul", &quant_matmul, py::arg("packed"), py::arg("scales"), py::arg("zeros"), py::arg("n"), py::arg("k"),
        py::arg("bits"), py::arg("group_size"), py::arg("x"), py::arg("y"), py::arg("stream"));
  m.def("quant_matmul_t", &quant_matmul_t, py::arg("packed"), py::arg("scales"), py::arg("zeros"), py::arg("n"),
        py::arg("k"), py::arg("bits"), py::arg("group_size"), py::arg("dy"), py::arg("dx"), py::arg("stream"));
  m.def("quant_dequantize_bf16", &quant_dequantize_bf16, py::arg("packed"), py::arg("scales"), py::arg("zeros"),
        py::arg("n"), py::arg("k"), py::arg("bits"), py::arg("group_size"), py::arg("row_begin"), py::arg("out"),
        py::arg("stream"), "out [rows, k] bf16 = rows [row_begin, row_begin + rows) of the packed W, dequantised");
  m.def("moe_experts", &moe_experts, py::arg("expert_table"), py::arg("x"), py::arg("topk_ids"), py::arg("topk_weights"),
        py::arg("y"), py::arg("slots_buffer"), py::arg("upload_slots"), py::arg("workspace"),
        py::arg("intermediate_size"), py::arg("stream"));
  m.attr("expert_slot_bytes") = sizeof(moeweave::ExpertSlot);
  py::class_<DeviceExpertPool>(m, "DeviceExpertPool",
                               "Device virtual memory in slots of whole granules, mapped only while in use")
      .def(py::init<int, int64_t, int64_t>(), py::arg("device"), py::arg("slot_bytes"), py::arg("capacity"))
      .def("map", &DeviceExpertPool::map, py::arg("slot"))
      .def("unmap", &DeviceExpertPool::unmap, py::arg("slot"))
      .def_property_readonly("address", &DeviceExpertPool::address)
      .def_property_readonly("stride", &DeviceExpertPool::stride)
      .def_property_readonly("capacity", &DeviceExpertPool::capacity)
      .def("mapped_bytes", &DeviceExpertPool::mapped_bytes);
  m.def("device_count", &moeweave::cuda::device_count,
        "CUDA devices visible, or a negative cudaError_t when the driver is unusable");
  m.def("runtime_version", &moeweave::cuda::runtime_version);
  m.attr("archs") = MOEWEAVE_CUDA_ARCHS;
}
