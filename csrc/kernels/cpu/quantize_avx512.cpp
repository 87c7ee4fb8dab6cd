// The quantiser at the AVX-512 level: quantize_tiles.h compiled with its flags.
#include "quantize_tiles.h"

namespace moeweave::cpu {

const QuantizeKernel kQuantizeAvx512 = quantize_tiles;

}  // namespace moeweave::cpu
