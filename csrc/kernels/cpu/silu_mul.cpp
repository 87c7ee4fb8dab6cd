// silu_mul's dispatcher: picks the ISA table, splits the flat range over the thread pool.
#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"
#include "variants.h"

namespace moeweave {

Status silu_mul(DType dtype, const void* gate, const void* up, void* out, int64_t n) {
  const cpu::SiluMulKernels& k =
      cpu::for_isa(current_isa(), cpu::kSiluMulScalar, cpu::kSiluMulAvx2, cpu::kSiluMulAvx512);
  // Below ~16k elements a thread wake-up costs more than the work.
  constexpr int64_t kGrain = 1 << 14;
  switch (dtype) {
    case DType::f32: {
      auto g = static_cast<const float*>(gate), u = static_cast<const float*>(up);
      auto o = static_cast<float*>(out);
      parallel_for(n, kGrain, [&](int64_t b, int64_t e) { k.f32(g + b, u + b, o + b, e - b); });
      return kOk;
    }
    case DType::f16:
    case DType::bf16: {
      auto fn = dtype == DType::f16 ? k.f16 : k.bf16;
      auto g = static_cast<const uint16_t*>(gate), u = static_cast<const uint16_t*>(up);
      auto o = static_cast<uint16_t*>(out);
      parallel_for(n, kGrain, [&](int64_t b, int64_t e) { fn(g + b, u + b, o + b, e - b); });
      return kOk;
    }
    default: return -EINVAL;
  }
}

}  // namespace moeweave
