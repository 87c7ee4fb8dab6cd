// Argument checks shared by the CPU and CUDA bindings of Bone's block-affine kernels: a W tile
// [rows, cols] (row-strided view) of f32/f16/bf16, a second tile of the same shape and dtype
// (W' out, or G), and the fp32 blocks [rows / r, r, r] of the tile's block rows.
#pragma once

#include <string>

#include "tensor_arg.h"

namespace moeweave::bindings {

// Checks the three arguments of one call and returns r.
inline int64_t bone_tile_block_size(int device, const TensorArg& w, const TensorArg& other, const TensorArg& block) {
  w.expect_rows(device, 2, {DType::f32, DType::f16, DType::bf16});
  other.expect_rows(device, 2, {DType::f32, DType::f16, DType::bf16}).expect_same(w);
  block.expect(device, 3, {DType::f32});
  const int64_t r = block.size(2);
  if (r < 1 || block.size(1) != r) block.fail("must be [rows / r, r, r], got " + block.shape_text());
  if (w.size(0) % r || w.size(1) % r || block.size(0) != w.size(0) / r)
    w.fail("must be a tile of whole " + std::to_string(r) + " x " + std::to_string(r) + " blocks with one block of " +
           "'block' per block row, got " + w.shape_text() + " for 'block' " + block.shape_text());
  return r;
}

}  // namespace moeweave::bindings
