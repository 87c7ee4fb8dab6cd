// The io_uring backend through raw syscalls and <linux/io_uring.h> (no liburing). Submitters fill
// submission entries under one mutex (the ring has a single producer); one reaper thread blocks
// in io_uring_enter(GETEVENTS), reports completions to the IoQueue and refills the ring, so
// queued prefetches keep the device busy while the caller computes. A short read (which a
// regular file gives only at its end) is resubmitted for the rest until the kernel returns 0.
//
// Setup proves the ring works with one no-op submitted and waited for: a seccomp profile may
// allow io_uring_setup but refuse io_uring_enter, and then every read would fail. Should the
// reaper later meet an error it cannot recover from, the backend is dead: reads in the kernel are
// still collected from the completion ring (their buffers must not be released while the kernel
// may write them) and fail with that error, as does every read queued then or later.
#include <system_error>
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <unordered_map>

#include "backend.h"

namespace moeweave::io {

namespace {

// user_data of the no-op that wakes the reaper at stop(); read ids start at 1.
constexpr uint64_t kWakeId = 0;

int sys_setup(unsigned entries, io_uring_params* params) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, params));
}

int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, nullptr, 0));
}

template <typename T>
T* at(void* base, uint32_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

class Uring final : public Backend {
 public:
  explicit Uring(IoQueue* queue) : queue_(queue) {}
  ~Uring() override { stop(); }

  Status setup() {
    io_uring_params params;
    std::memset(&params, 0, sizeof(params));
    ring_fd_ = sys_setup(queue_->depth(), &params);
    if (ring_fd_ < 0) return -errno;
    sq_bytes_ = params.sq_off.array + params.sq_entries * sizeof(unsigned);
    cq_bytes_ = params.cq_off.cqes + params.cq_entries * sizeof(io_uring_cqe);
    const bool single = params.features & IORING_FEAT_SINGLE_MMAP;
    if (single) sq_bytes_ = cq_bytes_ = std::max(sq_bytes_, cq_bytes_);
    sq_ring_ = mmap(nullptr, sq_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_, IORING_OFF_SQ_RING);
    if (sq_ring_ == MAP_FAILED) return -errno;
    cq_ring_ = single ? sq_ring_
                      : mmap(nullptr, cq_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_,
                             IORING_OFF_CQ_RING);
    if (cq_ring_ == MAP_FAILED) return -errno;
    sqes_bytes_ = params.sq_entries * sizeof(io_uring_sqe);
    sqes_ = static_cast<io_uring_sqe*>(
        mmap(nullptr, sqes_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_, IORING_OFF_SQES));
    if (sqes_ == MAP_FAILED) return -errno;

    sq_tail_ = at<unsigned>(sq_ring_, params.sq_off.tail);
    sq_mask_ = *at<unsigned>(sq_ring_, params.sq_off.ring_mask);
    unsigned* array = at<unsigned>(sq_ring_, params.sq_off.array);
    for (unsigned i = 0; i < params.sq_entries; ++i) array[i] = i;  // entry i lives in sqes_[i]
    cq_head_ = at<unsigned>(cq_ring_, params.cq_off.head);
    cq_tail_ = at<unsigned>(cq_ring_, params.cq_off.tail);
    cq_mask_ = *at<unsigned>(cq_ring_, params.cq_off.ring_mask);
    cqes_ = at<io_uring_cqe>(cq_ring_, params.cq_off.cqes);
    const Status probe = nop_round_trip();
    if (probe != kOk) return probe;
    try {
      reaper_ = std::thread([this] { reap(); });
    } catch (const std::system_error& error) {
      return -error.code().value();
    }
    return kOk;
  }

  const char* name() const override { return "io_uring"; }

  void kick() override {
    std::lock_guard<std::mutex> lock(sq_mu_);
    if (dead_error_ != 0) {
      fail_queued();
      return;
    }
    submit(fill());
  }

  void stop() override {
    if (reaper_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(sq_mu_);
        if (dead_error_ == 0) {  // a dead reaper is already on its way out
          prepare(IORING_OP_NOP, kWakeId, -1, nullptr, 0, 0);
          submit(1);
        }
      }
      reaper_.join();
    }
    if (sqes_ && sqes_ != MAP_FAILED) munmap(sqes_, sqes_bytes_);
    if (cq_ring_ && cq_ring_ != MAP_FAILED && cq_ring_ != sq_ring_) munmap(cq_ring_, cq_bytes_);
    if (sq_ring_ && sq_ring_ != MAP_FAILED) munmap(sq_ring_, sq_bytes_);
    if (ring_fd_ >= 0) close(ring_fd_);
    sqes_ = nullptr;
    cq_ring_ = sq_ring_ = nullptr;
    ring_fd_ = -1;
  }

 private:
  struct Progress {
    IoTask task;
    uint64_t done;  // bytes read so far (short reads are resubmitted for the rest)
  };

  // Caller holds sq_mu_. Reads in flight never exceed the queue depth <= sq entries, so a
  // free entry always exists.
  void prepare(uint8_t opcode, uint64_t id, int fd, char* buffer, uint64_t length, uint64_t offset) {
    const unsigned tail = *sq_tail_;
    io_uring_sqe* sqe = &sqes_[tail & sq_mask_];
    std::memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = opcode;
    sqe->fd = fd;
    sqe->addr = reinterpret_cast<uint64_t>(buffer);
    sqe->len = static_cast<uint32_t>(length);
    sqe->off = offset;
    sqe->user_data = id;
    __atomic_store_n(sq_tail_, tail + 1, __ATOMIC_RELEASE);
  }

  // Before the reaper starts: submits one no-op and waits for its completion, so a ring the
  // process may create but not use is refused here (and io_init falls back to the pread pool).
  Status nop_round_trip() {
    prepare(IORING_OP_NOP, kWakeId, -1, nullptr, 0, 0);
    int entered;
    do {
      entered = sys_enter(ring_fd_, 1, 1, IORING_ENTER_GETEVENTS);
    } while (entered < 0 && errno == EINTR);
    if (entered < 0) return -errno;
    const unsigned head = *cq_head_;
    if (head == __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE)) return -EIO;  // waited, yet nothing came
    const int result = cqes_[head & cq_mask_].res;
    __atomic_store_n(cq_head_, head + 1, __ATOMIC_RELEASE);
    return result < 0 ? result : kOk;
  }

  // Caller holds sq_mu_ and the backend is dead: fails every queued read with its error.
  void fail_queued() {
    IoTask task;
    while (queue_->take(&task)) queue_->finish(task.id, -dead_error_);
  }

  // Caller holds sq_mu_. Moves queued reads onto the ring while the queue has free slots;
  // returns how many entries it added.
  unsigned fill() {
    IoTask task;
    unsigned added = 0;
    while (queue_->take(&task)) {
      progress_[task.id] = {task, 0};
      prepare(IORING_OP_READ, task.id, task.fd, task.buffer, task.length, task.offset);
      ++added;
    }
    return added;
  }

  // Caller holds sq_mu_. Hands the last `count` entries to the kernel. If it refuses them
  // outright, they are taken back off the ring and their reads fail with its errno.
  void submit(unsigned count) {
    while (count > 0) {
      const int submitted = sys_enter(ring_fd_, count, 0, 0);
      if (submitted >= 0) {
        count -= std::min(count, static_cast<unsigned>(submitted));
        continue;
      }
      if (errno == EINTR) continue;
      const int error = errno;
      const unsigned tail = *sq_tail_;
      for (unsigned i = tail - count; i != tail; ++i) {
        const uint64_t id = sqes_[i & sq_mask_].user_data;
        if (id == kWakeId) continue;
        progress_.erase(id);
        queue_->finish(id, -error);
      }
      __atomic_store_n(sq_tail_, tail - count, __ATOMIC_RELEASE);
      return;
    }
  }

  void reap() {
    bool stopping = false;
    while (!stopping) {
      if (sys_enter(ring_fd_, 0, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR && errno != EAGAIN &&
          errno != EBUSY) {
        die(errno);
        return;
      }
      std::lock_guard<std::mutex> lock(sq_mu_);
      unsigned head = *cq_head_;
      const unsigned tail = __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
      unsigned resubmitted = 0;
      for (; head != tail; ++head) {
        const io_uring_cqe& cqe = cqes_[head & cq_mask_];
        if (cqe.user_data == kWakeId) {
          stopping = true;
          continue;
        }
        auto it = progress_.find(cqe.user_data);
        Progress& p = it->second;
        if (cqe.res > 0 && p.done + static_cast<uint64_t>(cqe.res) < p.task.length) {
          p.done += static_cast<uint64_t>(cqe.res);
          prepare(IORING_OP_READ, p.task.id, p.task.fd, p.task.buffer + p.done, p.task.length - p.done,
                  p.task.offset + p.done);
          ++resubmitted;
          continue;
        }
        const int64_t result = cqe.res < 0 ? cqe.res : static_cast<int64_t>(p.done) + cqe.res;
        progress_.erase(it);
        queue_->finish(cqe.user_data, result);
      }
      __atomic_store_n(cq_head_, head, __ATOMIC_RELEASE);
      submit(resubmitted + (stopping ? 0 : fill()));
    }
  }

  // The reaper cannot wait for completions any more (io_uring_enter failed with `error`): from
  // now on every read fails with it. Reads the kernel holds are collected by polling the
  // completion ring, which needs no syscall, before they are reported, so no caller releases a
  // buffer the kernel may still write.
  void die(int error) {
    std::unique_lock<std::mutex> lock(sq_mu_);
    dead_error_ = error;
    fail_queued();
    while (true) {
      unsigned head = *cq_head_;
      const unsigned tail = __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
      for (; head != tail; ++head) {
        const uint64_t id = cqes_[head & cq_mask_].user_data;
        if (id != kWakeId && progress_.erase(id)) queue_->finish(id, -error);
      }
      __atomic_store_n(cq_head_, head, __ATOMIC_RELEASE);
      if (progress_.empty()) return;
      lock.unlock();
      const timespec pause{0, 1000000};  // 1 ms: the reads left are in the device's hands
      nanosleep(&pause, nullptr);
      lock.lock();
    }
  }

  IoQueue* queue_;
  int ring_fd_ = -1;
  void* sq_ring_ = nullptr;
  void* cq_ring_ = nullptr;
  io_uring_sqe* sqes_ = nullptr;
  size_t sq_bytes_ = 0, cq_bytes_ = 0, sqes_bytes_ = 0;
  unsigned *sq_tail_ = nullptr, *cq_head_ = nullptr, *cq_tail_ = nullptr;
  unsigned sq_mask_ = 0, cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
  std::mutex sq_mu_;  // guards the submission ring, progress_, dead_error_ and the completion ring's head
  std::unordered_map<uint64_t, Progress> progress_;
  int dead_error_ = 0;  // errno that killed the reaper; 0 while it lives
  std::thread reaper_;
};

}  // namespace

Status make_uring_backend(IoQueue* queue, std::unique_ptr<Backend>* out) {
  auto ring = std::make_unique<Uring>(queue);
  const Status status = ring->setup();
  if (status != kOk) return status;
  *out = std::move(ring);
  return kOk;
}

}  // namespace moeweave::io
