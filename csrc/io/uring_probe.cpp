// Asks the kernel for a one-entry io_uring through the raw syscall. Containers often forbid the
// syscall (Docker's default seccomp profile answers EPERM), so `moeweave info` reports this and
// the expert reader falls back to its pread pool when it fails.
#include <linux/io_uring.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "moeweave/kernels_cpu.h"

namespace moeweave {

Status io_uring_probe() {
#ifdef __NR_io_uring_setup
  io_uring_params params;
  std::memset(&params, 0, sizeof(params));
  const long fd = syscall(__NR_io_uring_setup, 1, &params);
  if (fd < 0) return -errno;
  close(static_cast<int>(fd));
  return kOk;
#else
  return -ENOSYS;
#endif
}

}  // namespace moeweave
