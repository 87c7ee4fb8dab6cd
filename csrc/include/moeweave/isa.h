// CPU instruction-set levels. Every CPU kernel is compiled once per level (cmake/Isa.cmake) and
// the dispatcher picks the level in use at call time: the best one this CPU supports, or a lower
// one forced with set_isa() (MOEWEAVE_ISA from Python) to test or compare the variants.
#pragma once

#include "moeweave/status.h"

namespace moeweave {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

constexpr int kNumIsas = 3;

const char* isa_name(Isa isa);

// Highest level the CPU and the OS (saved register state) support.
Isa best_supported_isa();

bool isa_supported(Isa isa);

// Level the kernels dispatch to now.
Isa current_isa();

// AVX512-BF16 (bf16 pair dot products), which the avx512 level does not require; kernels that use
// it check this beside current_isa() == Isa::avx512.
bool avx512_bf16_supported();

// -ENOTSUP when this CPU lacks the level; the current level is then unchanged.
Status set_isa(Isa isa);

}  // namespace moeweave
