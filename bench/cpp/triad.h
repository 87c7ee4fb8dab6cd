// The memory-bandwidth limit every native benchmark is measured against, taken by the same
// binary just before its benchmarks run (absolute speeds on a shared machine drift; the ratio to
// a triad measured minutes apart does not drift as much). Mirrors bench/common.py's
// stream_triad_gbps and moeweave.cpu.last_level_cache_bytes.
#pragma once

#include <cstdint>

namespace moeweave::bench {

// Bytes of the largest cache cpu0 reports in sysfs, else sysconf(_SC_LEVEL3_CACHE_SIZE), else
// 32 MiB (the smallest L3 of the machines this project meets). Working sets of 4x it come from DRAM.
int64_t last_level_cache_bytes();

// STREAM triad a = b + s * c over three fp32 arrays of 4x the last-level cache each, split over
// the thread pool; bytes moved (3 per element, write-allocate not counted, as STREAM counts)
// per second, best of 5 repetitions.
double triad_bytes_per_second();

}  // namespace moeweave::bench
