// Scalar silu_mul: the portable baseline every CPU runs and the SIMD variants are tested against.
#include "scalar_math.h"
#include "variants.h"

namespace moeweave::cpu {

const SiluMulKernels kSiluMulScalar = {silu_mul_f32_tail, silu_mul_f16_tail, silu_mul_bf16_tail};

}  // namespace moeweave::cpu
