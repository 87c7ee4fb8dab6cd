// bench_store_read: the expert store's reader (moeweave/io.h) reading a 256 MiB file of random
// bytes, written once into a temporary directory, in 4 MiB extents (about one INT4 expert of
// DeepSeek-V2-Lite) with 8 reads in flight, O_DIRECT, once per backend: io_uring and the pread
// pool. An iteration reads the whole file in order. bytes/s is the disk's (or the virtual
// disk's host cache's) speed through each backend; triad_frac is there for symmetry with the
// other binaries, a disk being far below memory bandwidth.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "buffers.h"
#include "harness.h"
#include "moeweave/io.h"

using namespace moeweave;

namespace {

constexpr int64_t kFileBytes = int64_t(256) << 20, kExtent = int64_t(4) << 20;
constexpr uint32_t kQueueDepth = 8;

// The file, removed with its directory at exit. `error` says why there is none.
struct DataFile {
  std::string dir, path, error;
  DataFile() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp ? tmp : "/tmp") + "/moeweave_bench_XXXXXX";
    if (!mkdtemp(pattern.data())) {
      error = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    dir = pattern;
    path = dir + "/store.bin";
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
      error = std::string("open: ") + std::strerror(errno);
      return;
    }
    const bench::Buffer chunk = bench::aligned_buffer(kExtent);
    for (int64_t offset = 0; offset < kFileBytes && error.empty(); offset += kExtent) {
      bench::fill_random_bytes(chunk.get(), kExtent, uint64_t(offset));
      if (write(fd, chunk.get(), kExtent) != kExtent) error = std::string("write: ") + std::strerror(errno);
    }
    // Pages still dirty in the page cache would be flushed by the first O_DIRECT read, inside
    // the timing.
    if (error.empty() && fsync(fd) != 0) error = std::string("fsync: ") + std::strerror(errno);
    close(fd);
    // io_open falls back to buffered reads where the filesystem refuses O_DIRECT: those would
    // time the page cache, not the disk.
    const int direct = open(path.c_str(), O_RDONLY | O_DIRECT);
    if (direct >= 0)
      close(direct);
    else if (error.empty())
      error = "no O_DIRECT in " + dir + ": reads would come from the page cache";
  }
  ~DataFile() {
    if (!path.empty()) unlink(path.c_str());
    if (!dir.empty()) rmdir(dir.c_str());
  }
};

void store_read(benchmark::State& state, IoBackend backend) {
  static const DataFile file;
  if (!file.error.empty()) return state.SkipWithError(file.error.c_str());
  IoEngine* engine = nullptr;
  if (const Status status = io_init({backend, kQueueDepth}, &engine); status != kOk)
    return state.SkipWithError((std::string("io_init: ") + std::strerror(-status)).c_str());
  int32_t index = -1;  // of the file in the engine
  const bench::Buffer buffer = bench::aligned_buffer(kFileBytes);
  std::memset(buffer.get(), 0, kFileBytes);  // fault the pages in before timing
  std::vector<uint64_t> ids(kFileBytes / kExtent);
  if (io_open(engine, file.path.c_str(), &index) != kOk) {
    io_close(engine);
    return state.SkipWithError("io_open failed");
  }
  bench::run(state, [&] {
    for (size_t i = 0; i < ids.size(); ++i)
      if (io_submit(engine, {index, i * kExtent, kExtent, buffer.get() + i * kExtent, IoPriority::kDemand},
                    &ids[i]) != kOk)
        state.SkipWithError("io_submit failed");
    for (uint64_t id : ids) {
      IoCompletion done{};
      if (io_wait(engine, id, &done) != kOk || done.result != kExtent) state.SkipWithError("a read failed");
    }
    return kFileBytes;
  });
  io_close(engine);
}

}  // namespace

BENCHMARK_CAPTURE(store_read, io_uring, IoBackend::kUring)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(store_read, pread_pool, IoBackend::kPread)->UseRealTime()->Unit(benchmark::kMillisecond);
