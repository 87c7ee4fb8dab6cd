// Bone's block-affine kernels compiled for the avx512 level; the loops are bone_blocks.h's.
// Its vector width: 64 bytes.
constexpr long kVecBytes = 64;
#include "bone_blocks.h"

namespace moeweave::cpu {

const BoneKernelsByType kBoneAvx512 = bone_kernels();

}  // namespace moeweave::cpu
