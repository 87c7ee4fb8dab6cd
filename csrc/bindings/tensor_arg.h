// One tensor argument crossing into native code: a borrowed DLPack capsule, checked at the
// boundary. It consumes the capsule (renames it "used_dltensor", as the protocol asks) and
// releases the producer's reference when the call ends; the data is never copied. Error
// messages name the op and the argument, so a user sees which tensor was wrong and why.
#pragma once

#include <pybind11/pybind11.h>

#include <sstream>
#include <string>
#include <vector>

#include "dlpack.h"
#include "moeweave/dtype.h"

namespace moeweave::bindings {

namespace py = pybind11;

class TensorArg {
 public:
  TensorArg(const char* op, const char* name, const py::capsule& capsule) : op_(op), name_(name) {
    if (std::string(capsule.name() ? capsule.name() : "") != "dltensor")
      fail("must be an unused DLPack capsule (torch.utils.dlpack.to_dlpack(tensor))");
    managed_ = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    PyCapsule_SetName(capsule.ptr(), "used_dltensor");
    const DLTensor& t = managed_->dl_tensor;
    data_ = static_cast<char*>(t.data) + t.byte_offset;
    shape_.assign(t.shape, t.shape + t.ndim);
    strides_.resize(t.ndim);
    contiguous_ = true;
    int64_t expected = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      strides_[i] = t.strides ? t.strides[i] : expected;
      if (t.shape[i] != 1 && strides_[i] != expected) contiguous_ = false;
      expected *= t.shape[i];
    }
  }
  TensorArg(const TensorArg&) = delete;
  TensorArg& operator=(const TensorArg&) = delete;
  ~TensorArg() {
    if (managed_ && managed_->deleter) managed_->deleter(managed_);
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape_) n *= d;
    return n;
  }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int dim) const { return shape_.at(dim); }
  int64_t stride(int dim) const { return strides_.at(dim); }  // in elements
  const std::vector<int64_t>& shape() const { return shape_; }
  template <typename T>
  T* data() const { return static_cast<T*>(data_); }

  DType dtype() const {
    const DLDataType d = managed_->dl_tensor.dtype;
    if (d.lanes != 1) fail("must not be a vector-lane tensor");
    if (d.code == kDLFloat && d.bits == 32) return DType::f32;
    if (d.code == kDLFloat && d.bits == 16) return DType::f16;
    if (d.code == kDLBfloat && d.bits == 16) return DType::bf16;
    if (d.code == kDLInt && d.bits == 32) return DType::i32;
    if (d.code == kDLInt && d.bits == 64) return DType::i64;
    if (d.code == kDLInt && d.bits == 8) return DType::i8;
    if (d.code == kDLUInt && d.bits == 8) return DType::u8;
    fail("has an element type moeweave does not support");
  }

  // Checks shared by every op argument: device kind, contiguity, rank and element type.
  const TensorArg& expect(int device_type, int ndim, std::initializer_list<DType> dtypes) const {
    expect_rows(device_type, ndim, dtypes);
    if (!contiguous_) fail("must be contiguous");
    return *this;
  }

  // As expect, for a strided view whose innermost dim alone must be contiguous.
  const TensorArg& expect_rows(int device_type, int ndim, std::initializer_list<DType> dtypes) const {
    if (managed_->dl_tensor.device.device_type != device_type)
      fail(device_type == kDLCPU ? "must be a CPU tensor" : "must be a CUDA tensor");
    if (!shape_.empty() && shape_.back() != 1 && strides_.back() != 1) fail("must be contiguous in its last dim");
    if (ndim >= 0 && this->ndim() != ndim) fail("must have " + std::to_string(ndim) + " dims, got " + shape_text());
    bool known = false;
    for (DType d : dtypes) known |= d == dtype();
    if (!known) fail(std::string("has dtype ") + dtype_name(dtype()) + ", which this op does not accept");
    return *this;
  }

  void expect_same(const TensorArg& other) const {
    if (shape_ != other.shape_) fail("must have the shape of '" + other.name_ + "' " + other.shape_text() + ", got " + shape_text());
    if (dtype() != other.dtype())
      fail(std::string("must have the dtype of '") + other.name_ + "' (" + dtype_name(other.dtype()) + "), got " + dtype_name(dtype()));
  }

  std::string shape_text() const {
    std::ostringstream s;
    s << '[';
    for (size_t i = 0; i < shape_.size(); ++i) s << (i ? ", " : "") << shape_[i];
    s << ']';
    return s.str();
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw py::value_error(std::string(op_) + ": '" + name_ + "' " + what);
  }

 private:
  const char* op_;
  std::string name_;
  DLManagedTensor* managed_ = nullptr;
  void* data_ = nullptr;
  std::vector<int64_t> shape_;
  std::vector<int64_t> strides_;
  bool contiguous_ = true;
};

}  // namespace moeweave::bindings
