// Status codes across the native boundary. Kernels and the io layer never throw: they return 0
// on success or a negative errno (liburing's manners), and the binding turns that into a Python
// exception with a message naming the tensor or file involved.
#pragma once

#include <cerrno>

namespace moeweave {

using Status = int;
constexpr Status kOk = 0;

}  // namespace moeweave
