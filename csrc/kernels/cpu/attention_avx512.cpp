// AVX-512 attention: the fp32 primitives of attention_avx512_ops.h over the loop structure of
// attention_rows.h.
#include "attention_avx512_ops.h"
#include "variants.h"

namespace moeweave::cpu {

const AttentionKernel kAttentionAvx512 = attention_items<Avx512Ops>;

}  // namespace moeweave::cpu
