// The CUDA twin of moeweave.adapters.pool.ExpertPool (SPEC §2): one reserved range of device
// virtual addresses cut into slots of whole allocation granules (2 MiB on current GPUs). A slot
// is backed by physical memory (cuMemCreate + cuMemMap + cuMemSetAccess) when an expert moves
// in and gives it back (cuMemUnmap + cuMemRelease) when it leaves; addresses never move, so
// expert tables may point into the range. The driver's virtual-memory entry points are found
// through the runtime (cudaGetDriverEntryPointByVersion), so nothing links against libcuda.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cerrno>
#include <new>
#include <vector>

#include "moeweave/kernels_cuda.h"

namespace moeweave::cuda {
namespace {

struct Vmm {
  decltype(&cuMemAddressReserve) reserve = nullptr;
  decltype(&cuMemAddressFree) free_range = nullptr;
  decltype(&cuMemCreate) create = nullptr;
  decltype(&cuMemRelease) release = nullptr;
  decltype(&cuMemMap) map = nullptr;
  decltype(&cuMemUnmap) unmap = nullptr;
  decltype(&cuMemSetAccess) set_access = nullptr;
  decltype(&cuMemGetAllocationGranularity) granularity = nullptr;

  bool load() {
    return find("cuMemAddressReserve", reserve) && find("cuMemAddressFree", free_range) && find("cuMemCreate", create) &&
           find("cuMemRelease", release) && find("cuMemMap", map) && find("cuMemUnmap", unmap) &&
           find("cuMemSetAccess", set_access) && find("cuMemGetAllocationGranularity", granularity);
  }

 private:
  template <typename F>
  static bool find(const char* symbol, F& out) {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion(symbol, &fn, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      return false;
    out = reinterpret_cast<F>(fn);
    return true;
  }
};

const Vmm* vmm() {
  static const Vmm loaded = [] {
    Vmm v;
    return v.load() ? v : Vmm{};
  }();
  return loaded.reserve ? &loaded : nullptr;
}

Status failed(CUresult result) { return result == CUDA_SUCCESS ? kOk : -static_cast<Status>(result); }

}  // namespace

struct DevicePool {
  CUdeviceptr base = 0;
  int64_t stride = 0, capacity = 0;
  CUmemAllocationProp prop{};
  std::vector<CUmemGenericAllocationHandle> handles;  // per slot, 0 when unmapped
};

Status pool_create(int device, int64_t slot_bytes, int64_t capacity, DevicePool** out) {
  const Vmm* v = vmm();
  if (!v) return -ENOSYS;
  auto* pool = new (std::nothrow) DevicePool;
  if (!pool) return -ENOMEM;
  pool->prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  pool->prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  pool->prop.location.id = device;
  size_t granule = 0;
  Status status = failed(v->granularity(&granule, &pool->prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
  if (status == kOk) {
    pool->stride = (slot_bytes + int64_t(granule) - 1) / int64_t(granule) * int64_t(granule);
    pool->capacity = capacity;
    pool->handles.assign(size_t(capacity), 0);
    status = failed(v->reserve(&pool->base, size_t(pool->stride * capacity), granule, 0, 0));
  }
  if (status != kOk) {
    delete pool;
    return status;
  }
  *out = pool;
  return kOk;
}

Status pool_map(DevicePool* pool, int64_t slot) {
  const Vmm* v = vmm();
  if (slot < 0 || slot >= pool->capacity || pool->handles[size_t(slot)]) return -EINVAL;
  CUmemGenericAllocationHandle handle = 0;
  Status status = failed(v->create(&handle, size_t(pool->stride), &pool->prop, 0));
  if (status != kOk) return status;
  const CUdeviceptr at = pool->base + CUdeviceptr(slot * pool->stride);
  status = failed(v->map(at, size_t(pool->stride), 0, handle, 0));
  if (status == kOk) {
    CUmemAccessDesc access{};
    access.location = pool->prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    status = failed(v->set_access(at, size_t(pool->stride), &access, 1));
    if (status != kOk) v->unmap(at, size_t(pool->stride));
  }
  if (status != kOk) {
    v->release(handle);
    return status;
  }
  pool->handles[size_t(slot)] = handle;
  return kOk;
}

Status pool_unmap(DevicePool* pool, int64_t slot) {
  const Vmm* v = vmm();
  if (slot < 0 || slot >= pool->capacity || !pool->handles[size_t(slot)]) return -EINVAL;
  const Status status = failed(v->unmap(pool->base + CUdeviceptr(slot * pool->stride), size_t(pool->stride)));
  v->release(pool->handles[size_t(slot)]);
  pool->handles[size_t(slot)] = 0;
  return status;
}

uint64_t pool_address(const DevicePool* pool) { return uint64_t(pool->base); }
int64_t pool_stride(const DevicePool* pool) { return pool->stride; }

int64_t pool_mapped_bytes(const DevicePool* pool) {
  int64_t mapped = 0;
  for (const auto handle : pool->handles) mapped += handle ? pool->stride : 0;
  return mapped;
}

void pool_destroy(DevicePool* pool) {
  if (const Vmm* v = vmm()) {
    for (int64_t slot = 0; slot < pool->capacity; ++slot)
      if (pool->handles[size_t(slot)]) pool_unmap(pool, slot);
    v->free_range(pool->base, size_t(pool->stride * pool->capacity));
  }
  delete pool;
}

}  // namespace moeweave::cuda
