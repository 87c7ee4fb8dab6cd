// Public entry points of the torch-free CPU kernels. Pointers are to contiguous row-major
// buffers; each call dispatches on current_isa() and splits its work over the thread pool.
#pragma once

#include <cstdint>

#include "moeweave/dtype.h"
#include "moeweave/status.h"

namespace moeweave {

// out[i] = silu(gate[i]) * up[i] for i < n, computed in fp32 and rounded once to `dtype`
// (f32, f16 or bf16). -EINVAL for any other dtype.
Status silu_mul(DType dtype, const void* gate, const void* up, void* out, int64_t n);

// Token rerouting (SPEC §2): out[t, k] = remap[tok_adapter[t] + 1, topk_ids[t, k]].
// Shapes: topk_ids, out [T, K]; tok_adapter [T]; remap [A + 1, E]. An adapter outside [-1, A) or
// an id outside [0, E) gives -ERANGE, with the flat index of the first offending topk_ids entry
// in *bad_index (out is then partially written).
Status reroute(const int32_t* topk_ids, const int32_t* tok_adapter, const int32_t* remap,
               int32_t* out, int64_t T, int64_t K, int64_t A, int64_t E, int64_t* bad_index);

// 0 when this kernel lets the process set up an io_uring instance, else -errno
// (-EPERM under Docker's default seccomp profile, -ENOSYS on old kernels).
Status io_uring_probe();

}  // namespace moeweave
