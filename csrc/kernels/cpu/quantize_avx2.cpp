// The quantiser at the AVX2 level: quantize_tiles.h compiled with its flags.
#include "quantize_tiles.h"

namespace moeweave::cpu {

const QuantizeKernel kQuantizeAvx2 = quantize_tiles;

}  // namespace moeweave::cpu
