// Bone's block-affine kernels compiled for the scalar level; the loops are bone_blocks.h's.
// Its vector width: 16 bytes.
constexpr long kVecBytes = 16;
#include "bone_blocks.h"

namespace moeweave::cpu {

const BoneKernelsByType kBoneScalar = bone_kernels();

}  // namespace moeweave::cpu
