// What the engine (io_engine.cpp) needs from a backend: a nudge when reads were queued, and a
// stop once the queue is shut and drained. Backends take their reads from the shared IoQueue and
// report results back to it; they never throw.
#pragma once

#include <memory>

#include "io_queue.h"

namespace moeweave::io {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Reads were queued: issue as many as free slots allow.
  virtual void kick() = 0;
  // Called once, after IoQueue::shut() and drain(): release threads and kernel resources.
  virtual void stop() = 0;
};

// 0 and the backend, or -errno from io_uring_setup (or the ring mmaps).
Status make_uring_backend(IoQueue* queue, std::unique_ptr<Backend>* out);
Status make_pread_backend(IoQueue* queue, std::unique_ptr<Backend>* out);

// Reads [offset, offset + length) with pread, retrying on EINTR and short reads; returns the
// bytes read (fewer only at end of file) or -errno. The pread pool's read and a test oracle.
int64_t pread_full(int fd, char* buffer, uint64_t length, uint64_t offset);

}  // namespace moeweave::io
