// Entry points of the CUDA kernels, callable from a plain C++ translation unit (no CUDA headers
// needed by the caller). Pointers are device pointers to contiguous buffers; `stream` is a
// cudaStream_t passed as void*. Calls are asynchronous on that stream and never synchronise
// the host; the return value reports launch errors only.
#pragma once

#include <cstdint>

#include "moeweave/dtype.h"
#include "moeweave/kernels_cpu.h"
#include "moeweave/quant_formats.h"
#include "moeweave/status.h"

namespace moeweave::cuda {

Status silu_mul(DType dtype, const void* gate, const void* up, void* out, int64_t n, void* stream);

// Bone's block-affine W' tile and block gradient (see moeweave::bone_bat_form and
// moeweave::bone_bat_block_grad); w, out and g are device tiles with row strides ldw, ldo, ldg.
Status bone_bat_form(DType dtype, const void* w, int64_t ldw, const float* block, int64_t r, int64_t rows,
                     int64_t cols, void* out, int64_t ldo, void* stream);
Status bone_bat_block_grad(DType dtype, const void* w, int64_t ldw, const void* g, int64_t ldg, int64_t r,
                           int64_t rows, int64_t cols, float* dblock, void* stream);

// As moeweave::reroute, but ids or adapters out of range write -1 into out instead of failing:
// checking on the host would need a synchronisation and break CUDA-graph capture.
Status reroute(const int32_t* topk_ids, const int32_t* tok_adapter, const int32_t* remap,
               int32_t* out, int64_t T, int64_t K, int64_t A, int64_t E, void* stream);

// y [m, w.n] fp32 = x [m, w.k] w^T (x f32 or bf16); w's pointers are device pointers.
Status quant_matmul(const QuantMatrix& w, DType x_dtype, const void* x, int64_t m, float* y, void* stream);

// dx [m, w.k] fp32 = dy [m, w.n] fp32 w (see moeweave::quant_matmul_t), dequantising in registers.
Status quant_matmul_t(const QuantMatrix& w, const float* dy, int64_t m, float* dx, void* stream);

// out [row_end - row_begin, w.k] bf16 = those rows of w dequantised (see
// moeweave::quant_dequantize_bf16; w packed, row_begin a multiple of 16): the weight of a wide
// product on cuBLAS.
Status quant_dequantize_bf16(const QuantMatrix& w, int64_t row_begin, int64_t row_end, uint16_t* out, void* stream);

// The fused routed-expert stage (see moeweave::moe_experts) with the slot table in device memory
// and a caller-provided fp32 workspace of T * K * (I + H) elements. Out-of-range ids contribute
// nothing (no host synchronisation to report them). All experts share H and I.
Status moe_experts(const ExpertSlot* device_slots, int64_t num_slots, DType x_dtype, const void* x, int64_t T,
                   int64_t H, int64_t I, const int32_t* ids, const float* weights, int64_t K, float* y,
                   float* workspace, void* stream);

// Asynchronous host-to-device copy on `stream` (the expert slot table of moe_experts).
Status copy_to_device(void* dst, const void* src, int64_t bytes, void* stream);

// The device expert pool (expert_pool.cu): a reserved range of device addresses in slots of
// whole allocation granules, each backed by physical memory only while mapped. Errors: -ENOSYS
// without the driver's virtual-memory entry points, -EINVAL for a bad or busy slot, otherwise
// the negated CUresult.
struct DevicePool;
Status pool_create(int device, int64_t slot_bytes, int64_t capacity, DevicePool** out);
Status pool_map(DevicePool* pool, int64_t slot);
Status pool_unmap(DevicePool* pool, int64_t slot);
uint64_t pool_address(const DevicePool* pool);
int64_t pool_stride(const DevicePool* pool);
int64_t pool_mapped_bytes(const DevicePool* pool);
void pool_destroy(DevicePool* pool);

// Devices visible to the CUDA runtime, or -errno-like negative value when the driver is
// missing (no GPU, no libcuda).
int device_count();

// CUDA runtime version the module was built against, e.g. 13000.
int runtime_version();

// Last CUDA error as text, for exception messages.
const char* last_error();

}  // namespace moeweave::cuda
