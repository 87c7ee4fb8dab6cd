// The quantiser at the portable level: quantize_tiles.h compiled with its flags.
#include "quantize_tiles.h"

namespace moeweave::cpu {

const QuantizeKernel kQuantizeScalar = quantize_tiles;

}  // namespace moeweave::cpu
