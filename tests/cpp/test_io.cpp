// The io layer against independent oracles: CRC-32C against the published check value and the
// two implementations against each other; both backends against plain buffered reads of the same
// file; the queue's priority, cancellation and depth rules on the IoQueue itself, where the order
// of issue is deterministic.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "crc32c.h"
#include "io_queue.h"
#include "moeweave/io.h"

using namespace moeweave;

namespace {

std::vector<uint8_t> random_bytes(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(gen());
  return v;
}

std::string write_temp_file(const std::vector<uint8_t>& bytes) {
  char path[] = "/tmp/moeweave_io_test_XXXXXX";
  const int fd = mkstemp(path);
  CHECK(fd >= 0);
  CHECK(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  close(fd);
  return path;
}

struct AlignedBuffer {
  explicit AlignedBuffer(size_t n) : data(static_cast<uint8_t*>(std::aligned_alloc(kIoAlignment, n))) {}
  ~AlignedBuffer() { std::free(data); }
  uint8_t* data;
};

}  // namespace

TEST(crc32c_matches_check_value_and_variants_agree) {
  CHECK(crc32c(0, "123456789", 9) == 0xE3069283u);
  CHECK(crc32c(0, "", 0) == 0u);
  const std::vector<uint8_t> data = random_bytes(3 * 8192 * 3 + 777, 1);
  for (uint64_t length : {0ull, 1ull, 7ull, 8ull, 63ull, 255ull, 256ull, 257ull, 511ull, 512ull, 1000ull, 8192ull,
                          24575ull, 24576ull, 24577ull, 50000ull,
                          static_cast<unsigned long long>(data.size())}) {
    for (uint64_t start : {0ull, 3ull}) {
      if (start + length > data.size()) continue;
      const uint32_t scalar = io::crc32c_raw_scalar(0xFFFFFFFFu, data.data() + start, length);
      CHECK(io::crc32c_raw_sse42(0xFFFFFFFFu, data.data() + start, length) == scalar);
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq"))
        CHECK(io::crc32c_raw_avx512(0xFFFFFFFFu, data.data() + start, length) == scalar);
      const uint64_t half = length / 2;  // continuing from a partial crc gives the whole one
      CHECK(crc32c(crc32c(0, data.data() + start, half), data.data() + start + half, length - half) == ~scalar);
    }
  }
}

TEST(io_backends_read_what_the_file_holds) {
  const std::vector<uint8_t> bytes = random_bytes(1 << 20, 2);
  const std::string path = write_temp_file(bytes);
  for (IoBackend backend : {IoBackend::kUring, IoBackend::kPread}) {
    IoEngine* engine = nullptr;
    const Status status = io_init({backend, 4}, &engine);
    if (backend == IoBackend::kUring && (status == -EPERM || status == -ENOSYS)) continue;  // refused here
    CHECK(status == 0);
    int32_t file = -1;
    CHECK(io_open(engine, path.c_str(), &file) == 0);
    AlignedBuffer buffer(bytes.size());
    std::vector<uint64_t> ids;
    // 256 reads of 4 KiB in a scattered order, with mixed priorities: far more than the depth.
    for (uint64_t i = 0; i < 256; ++i) {
      const uint64_t block = (i * 97) % 256;
      const IoRequest request{file, block * 4096, 4096, buffer.data + block * 4096,
                              i % 3 ? IoPriority::kPrefetch : IoPriority::kDemand};
      uint64_t id = 0;
      CHECK(io_submit(engine, request, &id) == 0);
      ids.push_back(id);
    }
    for (uint64_t id : ids) {
      IoCompletion completion{};
      CHECK(io_wait(engine, id, &completion) == 0);
      CHECK(completion.result == 4096);
    }
    CHECK(std::memcmp(buffer.data, bytes.data(), bytes.size()) == 0);
    IoStats stats{};
    io_stats(engine, &stats);
    CHECK(stats.requests_completed == 256 && stats.bytes_completed == bytes.size());
    CHECK(stats.in_flight == 0 && stats.queued == 0 && stats.in_flight_max <= 4 && stats.in_flight_max >= 1);
    CHECK(io_wait(engine, ids[0], nullptr) == -ENOENT);  // a completion is consumed once
    io_close(engine);
  }
  unlink(path.c_str());
}

TEST(io_rejects_bad_requests_and_reports_end_of_file) {
  const std::vector<uint8_t> bytes = random_bytes(6000, 3);  // not a multiple of the block size
  const std::string path = write_temp_file(bytes);
  for (IoBackend backend : {IoBackend::kAuto, IoBackend::kPread}) {
    IoEngine* engine = nullptr;
    CHECK(io_init({backend, 2}, &engine) == 0);
    int32_t file = -1;
    CHECK(io_open(engine, "/nonexistent/moeweave", &file) == -ENOENT);
    CHECK(io_open(engine, path.c_str(), &file) == 0);
    AlignedBuffer buffer(3 * 4096);
    uint64_t id = 0;
    CHECK(io_submit(engine, {file, 100, 4096, buffer.data, IoPriority::kDemand}, &id) == -EINVAL);
    CHECK(io_submit(engine, {file, 0, 4000, buffer.data, IoPriority::kDemand}, &id) == -EINVAL);
    CHECK(io_submit(engine, {file, 0, 4096, buffer.data + 8, IoPriority::kDemand}, &id) == -EINVAL);
    CHECK(io_submit(engine, {file + 1, 0, 4096, buffer.data, IoPriority::kDemand}, &id) == -EINVAL);
    CHECK(io_submit(engine, {file, 0, 3 * 4096, buffer.data, IoPriority::kDemand}, &id) == 0);
    IoCompletion completion{};
    CHECK(io_wait(engine, id, &completion) == 0);
    CHECK(completion.result == 6000);
    CHECK(std::memcmp(buffer.data, bytes.data(), bytes.size()) == 0);
    io_close(engine);
  }
  IoEngine* engine = nullptr;
  CHECK(io_init({IoBackend::kPread, 0}, &engine) == -EINVAL);
  unlink(path.c_str());
}

TEST(io_queue_orders_by_priority_and_cancels_queued) {
  io::IoQueue queue(2);
  const io::IoTask task{0, -1, 0, 4096, nullptr};
  uint64_t a, b, c, d;
  CHECK(queue.push(task, IoPriority::kPrefetch, &a) == 0);
  CHECK(queue.push(task, IoPriority::kPrefetch, &b) == 0);
  CHECK(queue.push(task, IoPriority::kDemand, &c) == 0);
  CHECK(queue.push(task, IoPriority::kPrefetch, &d) == 0);
  CHECK(queue.promote(d) == 0);  // d is now a demand read, behind c
  CHECK(queue.cancel(a) == 0);
  io::IoTask taken{};
  CHECK(queue.take(&taken) && taken.id == c);
  CHECK(queue.take(&taken) && taken.id == d);
  CHECK(!queue.take(&taken));  // depth 2 reached
  CHECK(queue.cancel(c) == -EBUSY);
  IoCompletion completion{};
  CHECK(queue.peek(c, &completion) == -EAGAIN);
  queue.finish(c, 4096);
  CHECK(queue.take(&taken) && taken.id == b);
  CHECK(queue.wait(a, &completion) == -ECANCELED);
  CHECK(queue.peek(c, &completion) == 0 && completion.result == 4096);
  queue.finish(d, -EIO);
  queue.finish(b, 4096);
  IoStats stats{};
  queue.stats(&stats);
  CHECK(stats.requests_completed == 2 && stats.requests_failed == 1 && stats.requests_cancelled == 1);
  CHECK(stats.in_flight == 0 && stats.in_flight_max == 2 && stats.occupancy_mean > 0);
  queue.shut();
  CHECK(queue.push(task, IoPriority::kDemand, &a) == -ESHUTDOWN);
}
