// The fallback backend: queue_depth threads, each taking the most urgent queued read and doing it
// with blocking pread. It is what runs where io_uring is refused (containers), so it keeps the
// same priorities, cancellation and counters, all of which live in the shared IoQueue.
#include <system_error>
#include <unistd.h>

#include <cerrno>
#include <thread>
#include <vector>

#include "backend.h"

namespace moeweave::io {

int64_t pread_full(int fd, char* buffer, uint64_t length, uint64_t offset) {
  uint64_t done = 0;
  while (done < length) {
    const ssize_t got = ::pread(fd, buffer + done, length - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (got == 0) break;  // end of file
    done += static_cast<uint64_t>(got);
  }
  return static_cast<int64_t>(done);
}

namespace {

class PreadPool final : public Backend {
 public:
  explicit PreadPool(IoQueue* queue) : queue_(queue) {
    try {
      for (uint32_t i = 0; i < queue->depth(); ++i) threads_.emplace_back([this] { run(); });
    } catch (...) {
      // Release the threads already started before the failure propagates to the factory.
      queue_->shut();
      stop();
      throw;
    }
  }
  ~PreadPool() override { stop(); }

  const char* name() const override { return "pread"; }
  void kick() override {}  // the workers wake on the queue's own condition variable
  void stop() override {
    for (auto& thread : threads_)
      if (thread.joinable()) thread.join();
  }

 private:
  void run() {
    IoTask task;
    while (queue_->take_blocking(&task))
      queue_->finish(task.id, pread_full(task.fd, task.buffer, task.length, task.offset));
  }

  IoQueue* queue_;
  std::vector<std::thread> threads_;
};

}  // namespace

Status make_pread_backend(IoQueue* queue, std::unique_ptr<Backend>* out) {
  try {
    *out = std::make_unique<PreadPool>(queue);
  } catch (const std::system_error& error) {
    return -error.code().value();  // the thread could not start
  }
  return kOk;
}

}  // namespace moeweave::io
