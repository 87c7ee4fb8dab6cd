// Bone's block-affine dispatchers: pick the ISA table and the element type, split the rows over
// the thread pool.
#include <algorithm>
#include <cerrno>

#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"
#include "variants.h"

namespace moeweave {
namespace {

const cpu::BoneKernels* bone_kernels(DType dtype) {
  const cpu::BoneKernelsByType& k = cpu::for_isa(current_isa(), cpu::kBoneScalar, cpu::kBoneAvx2, cpu::kBoneAvx512);
  switch (dtype) {
    case DType::f32: return &k.f32;
    case DType::f16: return &k.f16;
    case DType::bf16: return &k.bf16;
    default: return nullptr;
  }
}

bool valid_tile(int64_t r, int64_t rows, int64_t cols) {
  return r > 0 && rows >= 0 && cols >= 0 && rows % r == 0 && cols % r == 0;
}

}  // namespace

Status bone_bat_form(DType dtype, const void* w, int64_t ldw, const float* block, int64_t r, int64_t rows,
                     int64_t cols, void* out, int64_t ldo) {
  const cpu::BoneKernels* k = bone_kernels(dtype);
  if (!k || !valid_tile(r, rows, cols)) return -EINVAL;
  // A row costs ~2 r cols flops; below ~64k of them a thread wake-up costs more than the work.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (2 * r * std::max<int64_t>(cols, 1)));
  parallel_for(rows, grain, [&](int64_t b, int64_t e) { k->form(w, ldw, block, r, cols, b, e, out, ldo); });
  return kOk;
}

Status bone_bat_block_grad(DType dtype, const void* w, int64_t ldw, const void* g, int64_t ldg, int64_t r,
                           int64_t rows, int64_t cols, float* dblock) {
  const cpu::BoneKernels* k = bone_kernels(dtype);
  if (!k || !valid_tile(r, rows, cols)) return -EINVAL;
  parallel_for(rows / r, 1, [&](int64_t b, int64_t e) { k->block_grad(w, ldw, g, ldg, r, cols, b, e, dblock); });
  return kOk;
}

}  // namespace moeweave
