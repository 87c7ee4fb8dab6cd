// Bone's block-affine kernels compiled for the avx2 level; the loops are bone_blocks.h's.
// Its vector width: 32 bytes.
constexpr long kVecBytes = 32;
#include "bone_blocks.h"

namespace moeweave::cpu {

const BoneKernelsByType kBoneAvx2 = bone_kernels();

}  // namespace moeweave::cpu
