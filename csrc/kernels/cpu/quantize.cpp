// quant_quantize's dispatcher: checks the format, picks the ISA table and spreads the weight's
// 16-row tiles over the thread pool. The body is quantize_tiles.h. Loading a bf16 checkpoint
// quantises every expert; in torch that was a dozen full-size fp32 passes per matrix (1.3 s for
// one Mixtral-sized 14336 x 4096 projection at round-to-nearest, 16 s with the clip search of 2
// and 3 bits), here one read of the weight per tile.
#include <cerrno>

#include "moeweave/kernels_cpu.h"
#include "moeweave/thread_pool.h"
#include "variants.h"

namespace moeweave {

Status quant_quantize(DType w_dtype, const void* w, int64_t ldw, int64_t n, int64_t k, int bits,
                      int group_size, bool sym, const float* clip_ratios, int num_ratios, DType scale_dtype,
                      uint8_t* packed, void* scales, void* zeros) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) return -EINVAL;
  if (group_size <= 0 || group_size % kQuantUnitCols || n < 0 || k < 0) return -EINVAL;
  if ((!sym && !zeros) || num_ratios < 1) return -EINVAL;
  if (w_dtype != DType::f32 && w_dtype != DType::f16 && w_dtype != DType::bf16) return -EINVAL;
  if (scale_dtype != DType::f32 && scale_dtype != DType::f16 && scale_dtype != DType::bf16) return -EINVAL;
  const cpu::QuantizeArgs args{w_dtype, w, ldw, n, k, bits, group_size, sym, clip_ratios, num_ratios,
                               scale_dtype, packed, scales, zeros};
  const cpu::QuantizeKernel run =
      cpu::for_isa(current_isa(), cpu::kQuantizeScalar, cpu::kQuantizeAvx2, cpu::kQuantizeAvx512);
  const int64_t tiles = quant_padded(n, kQuantTileRows) / kQuantTileRows;
  parallel_for(tiles, 1, [&](int64_t b, int64_t e) { run(args, b, e); });
  return kOk;
}

}  // namespace moeweave
