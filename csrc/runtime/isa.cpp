// Run-time ISA detection and the process-wide level the kernels dispatch to. Detection uses
// gcc's __builtin_cpu_supports, which also checks that the OS saves the AVX/AVX-512 registers.
#include "moeweave/isa.h"

#include <atomic>

namespace moeweave {
namespace {

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::avx512:
      return cpu_has(Isa::avx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
  }
  return false;
}

std::atomic<int>& level() {
  static std::atomic<int> value{static_cast<int>(best_supported_isa())};
  return value;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

Isa best_supported_isa() {
  static const Isa best = [] {
    __builtin_cpu_init();
    for (int i = kNumIsas - 1; i > 0; --i)
      if (cpu_has(static_cast<Isa>(i))) return static_cast<Isa>(i);
    return Isa::scalar;
  }();
  return best;
}

bool isa_supported(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(best_supported_isa()); }

bool avx512_bf16_supported() {
  static const bool supported = [] {
    __builtin_cpu_init();
    return cpu_has(Isa::avx512) && __builtin_cpu_supports("avx512bf16");
  }();
  return supported;
}

Isa current_isa() { return static_cast<Isa>(level().load(std::memory_order_relaxed)); }

Status set_isa(Isa isa) {
  if (!isa_supported(isa)) return -ENOTSUP;
  level().store(static_cast<int>(isa), std::memory_order_relaxed);
  return kOk;
}

}  // namespace moeweave
