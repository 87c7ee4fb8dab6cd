// The bookkeeping both io backends share: reads waiting for a free slot (ordered by priority,
// then by submission), reads in flight (at most `depth`), and completed reads waiting for their
// io_wait. It owns the counters too, so io_uring and the pread pool report the same telemetry.
// A backend only takes reads (take / take_blocking) and reports their results (finish).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "moeweave/io.h"

namespace moeweave::io {

// One read handed to a backend.
struct IoTask {
  uint64_t id;
  int fd;
  uint64_t offset;
  uint64_t length;
  char* buffer;
};

class IoQueue {
 public:
  explicit IoQueue(uint32_t depth);

  uint32_t depth() const { return depth_; }

  // Queues a read; -ESHUTDOWN once shut() was called.
  Status push(const IoTask& task, IoPriority priority, uint64_t* id);

  // Moves the most urgent queued read in flight if a slot is free; false otherwise.
  bool take(IoTask* out);
  // Like take, but blocks until a read and a slot are available; false once shut down and empty.
  bool take_blocking(IoTask* out);
  // Reports a read in flight as done: bytes read or -errno.
  void finish(uint64_t id, int64_t result);

  Status wait(uint64_t id, IoCompletion* out);
  Status peek(uint64_t id, IoCompletion* out);
  Status cancel(uint64_t id);
  Status promote(uint64_t id);
  void stats(IoStats* out) const;

  // While paused, take() issues nothing; reads stay queued in order.
  void set_paused(bool paused);

  // Refuses new reads, cancels queued ones and wakes blocked takers.
  void shut();
  // Blocks until no read is in flight.
  void drain();

 private:
  enum class State { kQueued, kInFlight, kDone, kCancelled };
  struct Record {
    IoTask task;
    IoPriority priority;
    State state;
    uint64_t submitted_ns;
    IoCompletion completion;
  };

  bool take_locked(IoTask* out);  // take() with mu_ held
  Status consume(std::unordered_map<uint64_t, Record>::iterator it, IoCompletion* out);
  void account_occupancy(uint64_t now_ns);  // integrates in_flight over time; call before it changes

  const uint32_t depth_;
  mutable std::mutex mu_;
  std::condition_variable changed_;  // a read was queued, finished or cancelled, or shut() ran
  std::unordered_map<uint64_t, Record> records_;
  std::map<std::pair<IoPriority, uint64_t>, uint64_t> queued_;  // (priority, id) -> id
  uint64_t next_id_ = 1;
  bool shut_ = false;
  bool paused_ = false;
  uint64_t issued_ = 0;  // reads handed to the backend so far: the next one's issue_index - 1
  IoStats stats_{};
  uint64_t start_ns_;
  uint64_t occupancy_since_ns_;
  double occupancy_area_ = 0;  // integral of in_flight over time, in read-nanoseconds
};

uint64_t monotonic_ns();

}  // namespace moeweave::io
