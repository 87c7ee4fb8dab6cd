// Asks whether this process can use io_uring: the expert reader's own backend is set up on a
// one-entry queue (io_uring_setup, the ring mappings and a no-op submitted and waited for), then
// taken down. Containers often forbid the syscalls (Docker's default seccomp profile answers
// EPERM), so `moeweave info` reports this, and the reader falls back to its pread pool.
#include "backend.h"
#include "moeweave/kernels_cpu.h"

namespace moeweave {

Status io_uring_probe() {
  io::IoQueue queue(1);
  std::unique_ptr<io::Backend> ring;
  const Status status = io::make_uring_backend(&queue, &ring);
  if (status != kOk) return status;
  queue.shut();
  ring->stop();
  return kOk;
}

}  // namespace moeweave
