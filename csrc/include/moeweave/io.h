// The expert reader's C API: asynchronous O_DIRECT reads of file extents into caller-provided,
// 4 KiB-aligned buffers, in liburing's manners (init / submit / wait / close verbs, 0 or -errno,
// nothing throws). One engine serves many reads in flight; each read has an id (its completion
// handle) and a priority, so a read the model waits for overtakes queued prefetches, and a
// prefetch that became stale can be cancelled while it is still queued.
//
// Two backends behind the same calls: io_uring through raw syscalls (csrc/io/uring.cpp), and a
// pread thread pool (csrc/io/pread_pool.cpp) used when io_uring is refused (io_uring_setup or a
// first no-op submission fails: EPERM under Docker's default seccomp profile, ENOSYS on old
// kernels) or when the caller asks for it.
//
// Every call but io_close may run concurrently with every other; io_close must be the last call.
// A caller that closes while other threads may still be inside calls uses io_shut first (it wakes
// them), waits until they have returned, then calls io_close.
#pragma once

#include <cstdint>

#include "moeweave/status.h"

namespace moeweave {

// O_DIRECT needs offsets, lengths and buffers aligned to the device's logical block; 4 KiB covers
// every device we meet and is the store's extent alignment.
constexpr uint64_t kIoAlignment = 4096;

enum class IoBackend : int32_t { kAuto = 0, kUring = 1, kPread = 2 };

// Lower value = more urgent. Within one priority, reads are issued in submission order.
enum class IoPriority : int32_t { kDemand = 0, kPrefetch = 1 };

struct IoParams {
  IoBackend backend = IoBackend::kAuto;
  uint32_t queue_depth = 8;  // reads in flight at once (io_uring entries, or pread threads)
};

struct IoRequest {
  int32_t file;     // index returned by io_open
  uint64_t offset;  // bytes, multiple of kIoAlignment
  uint64_t length;  // bytes, multiple of kIoAlignment, at most 2 GiB
  void* buffer;     // kIoAlignment-aligned, at least `length` bytes, untouched until completion
  IoPriority priority;
};

struct IoCompletion {
  int64_t result;       // bytes read (less than length only at end of file), or -errno
  uint64_t latency_ns;  // submission to completion, queueing included
  uint64_t issue_index; // this was the n-th read handed to the backend (1-based; 0: never issued)
};

// Counters since io_init. Occupancy is the time-average of reads in flight.
struct IoStats {
  uint64_t requests_completed;
  uint64_t bytes_completed;
  uint64_t requests_failed;
  uint64_t requests_cancelled;
  uint64_t latency_ns_total;  // sum over completed requests (mean = total / completed)
  uint64_t latency_ns_max;
  uint32_t in_flight;         // issued to the backend now
  uint32_t queued;            // waiting for a free slot now
  uint32_t in_flight_max;
  double occupancy_mean;      // reads in flight, averaged over the engine's lifetime
};

struct IoEngine;

// Creates an engine. kAuto takes io_uring and falls back to the pread pool when io_uring_setup or
// a first no-op submission and wait fails; kUring returns that failure instead. -EINVAL for
// queue_depth 0 or above 4096. Should the io_uring completion thread later meet an error it
// cannot recover from, every read pending then and every later read fails with that error.
Status io_init(const IoParams& params, IoEngine** out);

// The backend in use ("io_uring" or "pread") and, for kAuto, the errno that made it fall back.
const char* io_backend_name(const IoEngine* engine);
int io_fallback_errno(const IoEngine* engine);

// Opens a file for reading with O_DIRECT (buffered where the filesystem refuses O_DIRECT, as
// tmpfs did before Linux 6.6) and returns its index for IoRequest::file.
Status io_open(IoEngine* engine, const char* path, int32_t* file);

// Queues one read and returns its id. -EINVAL for a misaligned offset, length or buffer or an
// unknown file; -ESHUTDOWN after io_close began.
Status io_submit(IoEngine* engine, const IoRequest& request, uint64_t* id);

// Blocks until read `id` completes and consumes its completion (an id can be waited once).
// Returns 0 with the completion filled in (its result may be -errno), -ECANCELED for a read
// cancelled before it was issued, -ENOENT for an unknown or already consumed id.
Status io_wait(IoEngine* engine, uint64_t id, IoCompletion* out);

// Like io_wait but never blocks: -EAGAIN while the read is queued or in flight.
Status io_peek(IoEngine* engine, uint64_t id, IoCompletion* out);

// Removes a read that is still queued (not yet issued); its buffer is free again at once.
// -EBUSY when it is already in flight or done (wait for it instead), -ENOENT for an unknown id.
Status io_cancel(IoEngine* engine, uint64_t id);

// Makes a queued read a demand read (a prefetch the model now waits for). -EBUSY once issued.
Status io_promote(IoEngine* engine, uint64_t id);

// While paused, reads are queued but none is issued (those in flight finish); resuming issues
// them in priority order. Lets a caller submit a batch and have it scheduled as one.
void io_pause(IoEngine* engine, bool paused);

void io_stats(const IoEngine* engine, IoStats* out);

// Refuses new reads (-ESHUTDOWN) and cancels queued ones, waking their waiters; reads in flight
// complete. Idempotent, and safe while other threads are inside any call but io_close.
void io_shut(IoEngine* engine);

// Shuts, waits for reads in flight, closes the files and frees the engine. No other call may be
// in progress or follow.
Status io_close(IoEngine* engine);

// CRC-32C (Castagnoli) of `length` bytes, continuing from `crc` (0 to start): the standard
// checksum (pre- and post-inverted), so crc32c(0, "123456789", 9) == 0xE3069283. Uses the SSE4.2
// instruction when the CPU has it, a table otherwise.
uint32_t crc32c(uint32_t crc, const void* data, uint64_t length);

}  // namespace moeweave
