// moeweave._C_cuda: the pybind11 face of the CUDA kernels. Kernels are enqueued on the caller's
// stream (torch.cuda.current_stream().cuda_stream) and never synchronise the host.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "moeweave/kernels_cuda.h"
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

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "moeweave's CUDA kernels (torch-free; tensors arrive as DLPack capsules)";
  m.def("silu_mul", &silu_mul, py::arg("gate"), py::arg("up"), py::arg("out"), py::arg("stream"));
  m.def("reroute", &reroute, py::arg("topk_ids"), py::arg("tok_adapter"), py::arg("remap"), py::arg("out"),
        py::arg("stream"));
  m.def("device_count", &moeweave::cuda::device_count,
        "CUDA devices visible, or a negative cudaError_t when the driver is unusable");
  m.def("runtime_version", &moeweave::cuda::runtime_version);
  m.attr("archs") = MOEWEAVE_CUDA_ARCHS;
}
