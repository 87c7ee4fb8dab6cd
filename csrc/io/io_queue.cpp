// IoQueue: see io_queue.h. One mutex guards everything; every operation is O(log queued), far
// below the cost of the reads it schedules.
#include "io_queue.h"

#include <time.h>

#include <algorithm>
#include <cerrno>

namespace moeweave::io {

uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

IoQueue::IoQueue(uint32_t depth) : depth_(depth), start_ns_(monotonic_ns()), occupancy_since_ns_(start_ns_) {}

void IoQueue::account_occupancy(uint64_t now_ns) {
  occupancy_area_ += static_cast<double>(stats_.in_flight) * static_cast<double>(now_ns - occupancy_since_ns_);
  occupancy_since_ns_ = now_ns;
}

Status IoQueue::push(const IoTask& task, IoPriority priority, uint64_t* id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_) return -ESHUTDOWN;
    const uint64_t new_id = next_id_++;
    Record record{task, priority, State::kQueued, monotonic_ns(), {0, 0, 0}};
    record.task.id = new_id;
    records_.emplace(new_id, record);
    queued_.emplace(std::make_pair(priority, new_id), new_id);
    ++stats_.queued;
    *id = new_id;
  }
  changed_.notify_all();
  return kOk;
}

bool IoQueue::take(IoTask* out) {
  std::lock_guard<std::mutex> lock(mu_);
  return take_locked(out);
}

bool IoQueue::take_blocking(IoTask* out) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] { return shut_ || (!paused_ && !queued_.empty() && stats_.in_flight < depth_); });
  return take_locked(out);  // false once shut: shut() empties the queue
}

bool IoQueue::take_locked(IoTask* out) {
  if (paused_ || queued_.empty() || stats_.in_flight >= depth_) return false;
  const auto first = queued_.begin();
  Record& record = records_.at(first->second);
  queued_.erase(first);
  account_occupancy(monotonic_ns());
  record.state = State::kInFlight;
  record.completion.issue_index = ++issued_;
  --stats_.queued;
  ++stats_.in_flight;
  stats_.in_flight_max = std::max(stats_.in_flight_max, stats_.in_flight);
  *out = record.task;
  return true;
}

void IoQueue::finish(uint64_t id, int64_t result) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    Record& record = records_.at(id);
    const uint64_t now = monotonic_ns();
    account_occupancy(now);
    --stats_.in_flight;
    record.state = State::kDone;
    record.completion = {result, now - record.submitted_ns, record.completion.issue_index};
    if (result < 0) {
      ++stats_.requests_failed;
    } else {
      ++stats_.requests_completed;
      stats_.bytes_completed += static_cast<uint64_t>(result);
      stats_.latency_ns_total += record.completion.latency_ns;
      stats_.latency_ns_max = std::max(stats_.latency_ns_max, record.completion.latency_ns);
    }
  }
  changed_.notify_all();
}

Status IoQueue::consume(std::unordered_map<uint64_t, Record>::iterator it, IoCompletion* out) {
  const bool cancelled = it->second.state == State::kCancelled;
  if (out) *out = it->second.completion;
  records_.erase(it);
  return cancelled ? -ECANCELED : kOk;
}

Status IoQueue::wait(uint64_t id, IoCompletion* out) {
  std::unique_lock<std::mutex> lock(mu_);
  // Look the record up again after each wake-up: a push may rehash the map (invalidating
  // iterators), and another waiter of the same id may have consumed it.
  auto it = records_.find(id);
  changed_.wait(lock, [&] {
    it = records_.find(id);
    return it == records_.end() || it->second.state == State::kDone || it->second.state == State::kCancelled;
  });
  if (it == records_.end()) return -ENOENT;
  return consume(it, out);
}

Status IoQueue::peek(uint64_t id, IoCompletion* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = records_.find(id);
  if (it == records_.end()) return -ENOENT;
  if (it->second.state == State::kQueued || it->second.state == State::kInFlight) return -EAGAIN;
  return consume(it, out);
}

Status IoQueue::cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = records_.find(id);
    if (it == records_.end()) return -ENOENT;
    if (it->second.state != State::kQueued) return -EBUSY;
    queued_.erase(std::make_pair(it->second.priority, id));
    it->second.state = State::kCancelled;
    it->second.completion = {-ECANCELED, 0, 0};
    --stats_.queued;
    ++stats_.requests_cancelled;
  }
  changed_.notify_all();
  return kOk;
}

Status IoQueue::promote(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = records_.find(id);
  if (it == records_.end()) return -ENOENT;
  if (it->second.state != State::kQueued) return -EBUSY;
  queued_.erase(std::make_pair(it->second.priority, id));
  it->second.priority = IoPriority::kDemand;
  queued_.emplace(std::make_pair(IoPriority::kDemand, id), id);
  return kOk;
}

void IoQueue::stats(IoStats* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  *out = stats_;
  const uint64_t now = monotonic_ns();
  const double area = occupancy_area_ + static_cast<double>(stats_.in_flight) * static_cast<double>(now - occupancy_since_ns_);
  out->occupancy_mean = now > start_ns_ ? area / static_cast<double>(now - start_ns_) : 0.0;
}

void IoQueue::set_paused(bool paused) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    paused_ = paused;
  }
  changed_.notify_all();
}

void IoQueue::shut() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    shut_ = true;
    for (const auto& [key, id] : queued_) {
      Record& record = records_.at(id);
      record.state = State::kCancelled;
      record.completion = {-ECANCELED, 0, 0};
      ++stats_.requests_cancelled;
    }
    stats_.queued = 0;
    queued_.clear();
  }
  changed_.notify_all();
}

void IoQueue::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] { return stats_.in_flight == 0; });
}

}  // namespace moeweave::io
