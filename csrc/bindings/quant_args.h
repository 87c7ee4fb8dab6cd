// Argument parsing shared by the CPU and CUDA bindings of quant_matmul and moe_experts: a
// quantised matrix from its tensors and format fields, and the expert slot table from its
// int64 rows (packed, scales, zeros, n, k, bits, group_size, scale dtype).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moeweave/decode_step.h"
#include "moeweave/kernels_cpu.h"
#include "moeweave/quant_formats.h"
#include "tensor_arg.h"

namespace moeweave::bindings {

constexpr int kTableFields = 8;

// Holds the borrowed tensors for the duration of the call, and the matrix that points into them.
struct QuantMatrixArg {
  std::unique_ptr<TensorArg> packed, scales, zeros;
  QuantMatrix matrix{};

  QuantMatrixArg(const char* op, int device, const py::capsule& packed_c, const std::optional<py::capsule>& scales_c,
                 const std::optional<py::capsule>& zeros_c, int64_t n, int64_t k, int bits, int group_size) {
    packed = std::make_unique<TensorArg>(op, "packed", packed_c);
    matrix.n = n, matrix.k = k, matrix.bits = bits, matrix.group_size = group_size;
    if (bits == 16) {
      packed->expect(device, 2, {DType::bf16});
      if (packed->size(0) != n || packed->size(1) != k)
        packed->fail("must be [n, k] for a bf16 matrix, got " + packed->shape_text());
      matrix.packed = packed->data<uint8_t>();
      return;
    }
    packed->expect(device, 3, {DType::u8});
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8) packed->fail("has unsupported bits " + std::to_string(bits));
    if (group_size <= 0 || group_size % kQuantUnitCols) packed->fail("has a group size that is not a multiple of 32");
    if (!scales_c) packed->fail("needs 'scales' (a quantised matrix)");
    scales = std::make_unique<TensorArg>(op, "scales", *scales_c);
    scales->expect(device, 3, {DType::f32, DType::f16, DType::bf16});
    const int64_t tiles = quant_padded(n, kQuantTileRows) / kQuantTileRows, kp = quant_padded(k, group_size);
    if (packed->numel() != tiles * (kp / kQuantUnitCols) * quant_unit_bytes(bits))
      packed->fail("has " + std::to_string(packed->numel()) + " bytes, which does not match the format");
    if (scales->numel() != tiles * (kp / group_size) * kQuantTileRows) scales->fail("has the wrong number of elements for the format");
    matrix.packed = packed->data<uint8_t>();
    matrix.scales = scales->data<void>();
    matrix.scale_dtype = scales->dtype();
    if (zeros_c) {
      zeros = std::make_unique<TensorArg>(op, "zeros", *zeros_c);
      zeros->expect(device, 3, {DType::f32, DType::f16, DType::bf16}).expect_same(*scales);
      matrix.zeros = zeros->data<void>();
    }
  }
};

inline void check_matmul_io(const TensorArg& x, const TensorArg& y, int device, int64_t n, int64_t k) {
  x.expect(device, 2, {DType::f32, DType::bf16});
  y.expect(device, 2, {DType::f32});
  if (x.size(1) != k) x.fail("must have " + std::to_string(k) + " columns, got " + x.shape_text());
  if (y.size(0) != x.size(0) || y.size(1) != n)
    y.fail("must be [" + std::to_string(x.size(0)) + ", " + std::to_string(n) + "], got " + y.shape_text());
}

// The output of quant_dequantize_bf16 (bf16 [rows, k] on `device`) checked against the weight;
// returns the end of its row range.
inline int64_t dequantize_row_end(const char* op, const TensorArg& out, int device, int64_t n, int64_t k, int bits,
                                  int64_t row_begin) {
  out.expect(device, 2, {DType::bf16});
  if (out.size(1) != k) out.fail("must have " + std::to_string(k) + " columns, got " + out.shape_text());
  const int64_t row_end = row_begin + out.size(0);
  if (bits == 16) throw py::value_error(std::string(op) + ": the weight is not packed (bits 16)");
  if (row_begin < 0 || row_begin % kQuantTileRows || row_end > n)
    out.fail("must cover rows [row_begin, row_begin + " + std::to_string(out.size(0)) + ") inside the weight's " +
             std::to_string(n) + ", row_begin a multiple of 16 (got " + std::to_string(row_begin) + ")");
  return row_end;
}

// The routing arguments of moe_experts, checked against x; the table is always a CPU tensor.
inline std::vector<ExpertSlot> expert_slots(const TensorArg& table, const TensorArg& x, const TensorArg& ids,
                                            const TensorArg& weights, const TensorArg& y, int device) {
  table.expect(kDLCPU, 3, {DType::i64});
  x.expect(device, 2, {DType::f32, DType::bf16});
  ids.expect(device, 2, {DType::i32});
  weights.expect(device, 2, {DType::f32});
  y.expect(device, 2, {DType::f32});
  if (table.size(1) != 3 || table.size(2) != kTableFields) table.fail("must be [E, 3, 8], got " + table.shape_text());
  if (weights.shape() != ids.shape())
    weights.fail("must have the shape of 'topk_ids' " + ids.shape_text() + ", got " + weights.shape_text());
  if (ids.size(0) != x.size(0)) ids.fail("must have one row per token (" + std::to_string(x.size(0)) + "), got " + ids.shape_text());
  if (y.shape() != x.shape()) y.fail("must have the shape of 'x' " + x.shape_text() + ", got " + y.shape_text());
  const int64_t* fields = table.data<int64_t>();
  std::vector<ExpertSlot> slots(table.size(0));
  for (size_t e = 0; e < slots.size(); ++e) slots[e] = expert_slot_from_row(fields + e * 3 * kTableFields);
  return slots;
}

}  // namespace moeweave::bindings
