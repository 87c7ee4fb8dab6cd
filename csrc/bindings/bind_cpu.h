// Registration functions of the parts of moeweave._C that live in their own files.
#pragma once

#include <pybind11/pybind11.h>

namespace moeweave::bindings {

void bind_quant(pybind11::module_& m);
void bind_io(pybind11::module_& m);
void bind_decode(pybind11::module_& m);

}  // namespace moeweave::bindings
