// The native thread pool that CPU kernels split their work over. It is separate from torch's
// OpenMP pool: our kernels run while torch is idle (inside one op call), so the two never
// compete, and a process that uses no moeweave op starts no thread.
#pragma once

#include <cstdint>
#include <functional>

namespace moeweave {

// Threads used by parallel_for, the caller included. Defaults to the number of CPUs available to
// the process.
int num_threads();

// n < 1 is clamped to 1. Takes effect for the next parallel_for.
void set_num_threads(int n);

// Calls fn(begin, end) over disjoint chunks of [0, n) of at least `grain` items, spread over the
// pool; returns when all are done. Runs inline when the work is one chunk or when called from
// inside a pool task (no nested parallelism).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace moeweave
