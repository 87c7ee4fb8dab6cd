// The C API of csrc/include/moeweave/io.h: picks the backend, owns the open files, checks each
// request at the boundary (O_DIRECT alignment, known file) and forwards the rest to the IoQueue.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <deque>
#include <memory>
#include <mutex>

#include "backend.h"

namespace moeweave {

struct IoEngine {
  explicit IoEngine(uint32_t depth) : queue(depth) {}

  io::IoQueue queue;
  std::unique_ptr<io::Backend> backend;
  int fallback_errno = 0;
  std::mutex files_mu;
  std::deque<int> fds;  // index -> file descriptor; a deque so io_open never moves entries
};

Status io_init(const IoParams& params, IoEngine** out) {
  if (params.queue_depth == 0 || params.queue_depth > 4096) return -EINVAL;
  auto engine = std::make_unique<IoEngine>(params.queue_depth);
  Status status = -EINVAL;
  if (params.backend == IoBackend::kAuto || params.backend == IoBackend::kUring) {
    status = io::make_uring_backend(&engine->queue, &engine->backend);
    if (status != kOk && params.backend == IoBackend::kUring) return status;
    if (status != kOk) engine->fallback_errno = -status;
  }
  if (status != kOk && params.backend != IoBackend::kUring) {
    status = io::make_pread_backend(&engine->queue, &engine->backend);
    if (status != kOk) return status;
  }
  *out = engine.release();
  return kOk;
}

const char* io_backend_name(const IoEngine* engine) { return engine->backend->name(); }

int io_fallback_errno(const IoEngine* engine) { return engine->fallback_errno; }

Status io_open(IoEngine* engine, const char* path, int32_t* file) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
  if (fd < 0 && errno == EINVAL) fd = open(path, O_RDONLY | O_CLOEXEC);  // no O_DIRECT here
  if (fd < 0) return -errno;
  std::lock_guard<std::mutex> lock(engine->files_mu);
  engine->fds.push_back(fd);
  *file = static_cast<int32_t>(engine->fds.size() - 1);
  return kOk;
}

Status io_submit(IoEngine* engine, const IoRequest& request, uint64_t* id) {
  if (request.offset % kIoAlignment || request.length % kIoAlignment || request.length == 0 ||
      request.length > (1ull << 31) || reinterpret_cast<uintptr_t>(request.buffer) % kIoAlignment)
    return -EINVAL;
  if (request.priority != IoPriority::kDemand && request.priority != IoPriority::kPrefetch) return -EINVAL;
  int fd;
  {
    std::lock_guard<std::mutex> lock(engine->files_mu);
    if (request.file < 0 || static_cast<size_t>(request.file) >= engine->fds.size()) return -EINVAL;
    fd = engine->fds[static_cast<size_t>(request.file)];
  }
  const io::IoTask task{0, fd, request.offset, request.length, static_cast<char*>(request.buffer)};
  const Status status = engine->queue.push(task, request.priority, id);
  if (status == kOk) engine->backend->kick();
  return status;
}

Status io_wait(IoEngine* engine, uint64_t id, IoCompletion* out) { return engine->queue.wait(id, out); }

Status io_peek(IoEngine* engine, uint64_t id, IoCompletion* out) { return engine->queue.peek(id, out); }

Status io_cancel(IoEngine* engine, uint64_t id) { return engine->queue.cancel(id); }

Status io_promote(IoEngine* engine, uint64_t id) { return engine->queue.promote(id); }

void io_pause(IoEngine* engine, bool paused) {
  engine->queue.set_paused(paused);
  if (!paused) engine->backend->kick();
}

void io_stats(const IoEngine* engine, IoStats* out) { engine->queue.stats(out); }

void io_shut(IoEngine* engine) { engine->queue.shut(); }

Status io_close(IoEngine* engine) {
  engine->queue.shut();
  engine->queue.drain();
  engine->backend->stop();
  for (int fd : engine->fds) close(fd);
  delete engine;
  return kOk;
}

}  // namespace moeweave
