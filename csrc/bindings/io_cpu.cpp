// Bindings of the expert reader's io engine (part of moeweave._C): a pybind11 class over the C
// API of moeweave/io.h with close() and context-manager support, and crc32c. Read buffers cross
// as DLPack capsules of 1-D uint8 CPU tensors; the Python caller keeps the tensor alive until the
// read is waited for (moeweave.store.reader does). The GIL is released around every call that may
// block or touch the kernel.
//
// close() may race with calls on other threads: each call holds a use of the engine for its
// duration, and close() takes the engine away first (later calls raise IoEngineClosed), shuts its
// queue (waking waiters of queued reads), waits for the last use to end and only then frees it.
#include <pybind11/pybind11.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "bind_cpu.h"
#include "moeweave/io.h"
#include "tensor_arg.h"

namespace py = pybind11;
using moeweave::IoCompletion;
using moeweave::Status;
using moeweave::bindings::TensorArg;

namespace {

[[noreturn]] void raise_os_error(int error, const std::string& what, const std::string& path) {
  PyErr_SetObject(PyExc_OSError, py::make_tuple(error, what + ": " + std::strerror(error), path).ptr());
  throw py::error_already_set();
}

struct EngineClosed : std::runtime_error {
  EngineClosed() : std::runtime_error("IoEngine is closed") {}
};

class PyIoEngine {
 public:
  PyIoEngine(const std::string& backend, uint32_t queue_depth) {
    moeweave::IoParams params;
    if (backend == "auto") params.backend = moeweave::IoBackend::kAuto;
    else if (backend == "uring") params.backend = moeweave::IoBackend::kUring;
    else if (backend == "pread") params.backend = moeweave::IoBackend::kPread;
    else throw py::value_error("IoEngine: backend must be 'auto', 'uring' or 'pread', got '" + backend + "'");
    params.queue_depth = queue_depth;
    if (queue_depth == 0 || queue_depth > 4096)
      throw py::value_error("IoEngine: queue_depth must be in [1, 4096], got " + std::to_string(queue_depth));
    const Status status = moeweave::io_init(params, &engine_);
    if (status != 0) raise_os_error(-status, "IoEngine: cannot start the '" + backend + "' backend", "");
  }
  ~PyIoEngine() { close(); }

  // Idempotent; a second closer returns once the first has freed the engine.
  void close() {
    py::gil_scoped_release release;
    std::unique_lock<std::mutex> lock(mu_);
    if (closing_) {
      changed_.wait(lock, [&] { return engine_ == nullptr; });
      return;
    }
    closing_ = true;  // no call starts from here on
    moeweave::io_shut(engine_);
    changed_.wait(lock, [&] { return users_ == 0; });
    lock.unlock();
    moeweave::io_close(engine_);  // waits for reads in flight: no lock held meanwhile
    lock.lock();
    engine_ = nullptr;
    changed_.notify_all();
  }

  bool closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return closing_;
  }

  std::string backend() { return moeweave::io_backend_name(Use(*this).engine); }
  int fallback_errno() { return moeweave::io_fallback_errno(Use(*this).engine); }

  int32_t open(const std::string& path) {
    int32_t file = -1;
    const Status status = moeweave::io_open(Use(*this).engine, path.c_str(), &file);
    if (status != 0) raise_os_error(-status, "IoEngine.open", path);
    return file;
  }

  uint64_t submit(int32_t file, uint64_t offset, uint64_t length, const py::capsule& buffer_c,
                  const std::string& priority) {
    TensorArg buffer("IoEngine.submit", "buffer", buffer_c);
    buffer.expect(kDLCPU, 1, {moeweave::DType::u8});
    if (static_cast<uint64_t>(buffer.numel()) < length)
      buffer.fail("holds " + std::to_string(buffer.numel()) + " bytes, fewer than the read's " + std::to_string(length));
    if (priority != "demand" && priority != "prefetch")
      throw py::value_error("IoEngine.submit: priority must be 'demand' or 'prefetch', got '" + priority + "'");
    const moeweave::IoRequest request{file, offset, length, buffer.data<void>(),
                                      priority == "demand" ? moeweave::IoPriority::kDemand
                                                           : moeweave::IoPriority::kPrefetch};
    uint64_t id = 0;
    Status status;
    {
      Use use(*this);
      py::gil_scoped_release release;
      status = moeweave::io_submit(use.engine, request, &id);
    }
    if (status == -EINVAL)
      throw py::value_error("IoEngine.submit: file " + std::to_string(file) + " is unknown, or offset " +
                            std::to_string(offset) + ", length " + std::to_string(length) +
                            " or the buffer address is not a multiple of 4096 (or the length is 0 or over 2 GiB)");
    if (status == -ESHUTDOWN) throw EngineClosed();  // closed after this call began
    if (status != 0) raise_os_error(-status, "IoEngine.submit", "");
    return id;
  }

  // (result, latency_ns, issue_index): result is the bytes read or -errno (-ECANCELED for a read
  // cancelled before it was issued, or by close()).
  py::tuple wait(uint64_t id) {
    IoCompletion completion{};
    Status status;
    {
      Use use(*this);
      py::gil_scoped_release release;
      status = moeweave::io_wait(use.engine, id, &completion);
    }
    return completion_tuple(id, status, completion);
  }

  py::object peek(uint64_t id) {
    IoCompletion completion{};
    const Status status = moeweave::io_peek(Use(*this).engine, id, &completion);
    if (status == -EAGAIN) return py::none();
    return completion_tuple(id, status, completion);
  }

  // True when the read was still queued and is now cancelled; False once in flight or done.
  bool cancel(uint64_t id) { return queued_change(id, moeweave::io_cancel(Use(*this).engine, id)); }
  bool promote(uint64_t id) { return queued_change(id, moeweave::io_promote(Use(*this).engine, id)); }

  void pause(bool paused) {
    Use use(*this);
    py::gil_scoped_release release;
    moeweave::io_pause(use.engine, paused);
  }

  py::dict stats() {
    moeweave::IoStats s{};
    moeweave::io_stats(Use(*this).engine, &s);
    py::dict d;
    d["requests_completed"] = s.requests_completed;
    d["bytes_completed"] = s.bytes_completed;
    d["requests_failed"] = s.requests_failed;
    d["requests_cancelled"] = s.requests_cancelled;
    d["latency_ns_mean"] = s.requests_completed ? static_cast<double>(s.latency_ns_total) / s.requests_completed : 0.0;
    d["latency_ns_max"] = s.latency_ns_max;
    d["in_flight"] = s.in_flight;
    d["queued"] = s.queued;
    d["in_flight_max"] = s.in_flight_max;
    d["occupancy_mean"] = s.occupancy_mean;
    return d;
  }

 private:
  // One call's hold on the engine: close() frees it only after every Use has ended.
  struct Use {
    explicit Use(PyIoEngine& owner) : owner(owner) {
      std::lock_guard<std::mutex> lock(owner.mu_);
      if (owner.closing_) throw EngineClosed();
      ++owner.users_;
      engine = owner.engine_;
    }
    ~Use() {
      std::lock_guard<std::mutex> lock(owner.mu_);
      if (--owner.users_ == 0) owner.changed_.notify_all();
    }
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;

    PyIoEngine& owner;
    moeweave::IoEngine* engine;
  };

  static py::tuple completion_tuple(uint64_t id, Status status, const IoCompletion& completion) {
    if (status == -ENOENT) throw py::key_error("IoEngine: no read with id " + std::to_string(id) + " is pending");
    if (status == -ECANCELED) return py::make_tuple(static_cast<int64_t>(-ECANCELED), 0, 0);
    return py::make_tuple(completion.result, completion.latency_ns, completion.issue_index);
  }

  static bool queued_change(uint64_t id, Status status) {
    if (status == -ENOENT) throw py::key_error("IoEngine: no read with id " + std::to_string(id) + " is pending");
    return status == 0;
  }

  std::mutex mu_;                   // guards engine_, closing_ and users_
  std::condition_variable changed_; // a use ended, or close() finished
  moeweave::IoEngine* engine_ = nullptr;
  bool closing_ = false;
  int users_ = 0;
};

uint32_t py_crc32c(const py::buffer& data, uint32_t crc) {
  const py::buffer_info info = data.request();
  if (!PyBuffer_IsContiguous(info.view(), 'C')) throw py::value_error("crc32c: 'data' must be contiguous");
  const uint64_t length = static_cast<uint64_t>(info.size) * static_cast<uint64_t>(info.itemsize);
  py::gil_scoped_release release;
  return moeweave::crc32c(crc, info.ptr, length);
}

}  // namespace

namespace moeweave::bindings {

void bind_io(py::module_& m) {
  py::register_exception<EngineClosed>(m, "IoEngineClosed", PyExc_ValueError);
  py::class_<PyIoEngine>(m, "IoEngine", "Asynchronous O_DIRECT reads: io_uring, or a pread thread pool")
      .def(py::init<const std::string&, uint32_t>(), py::arg("backend") = "auto", py::arg("queue_depth") = 8)
      .def_property_readonly("backend", &PyIoEngine::backend)
      .def_property_readonly("fallback_errno", &PyIoEngine::fallback_errno)
      .def("open", &PyIoEngine::open, py::arg("path"), "Open a file for reading; returns its index")
      .def("submit", &PyIoEngine::submit, py::arg("file"), py::arg("offset"), py::arg("length"), py::arg("buffer"),
           py::arg("priority") = "demand", "Queue a read into a 4 KiB-aligned uint8 buffer; returns its id")
      .def("wait", &PyIoEngine::wait, py::arg("id"),
           "Block until the read is done: (bytes or -errno, latency_ns, issue_index)")
      .def("peek", &PyIoEngine::peek, py::arg("id"), "Like wait, but None while the read is pending")
      .def("cancel", &PyIoEngine::cancel, py::arg("id"), "Cancel a read that is still queued")
      .def("promote", &PyIoEngine::promote, py::arg("id"), "Make a queued prefetch a demand read")
      .def("pause", &PyIoEngine::pause, py::arg("paused") = true,
           "Hold queued reads (none is issued) until pause(False); reads in flight finish")
      .def("stats", &PyIoEngine::stats)
      .def_property_readonly("closed", &PyIoEngine::closed)
      .def("close", &PyIoEngine::close, "Idempotent and safe while other threads use the engine")
      .def("__enter__", [](PyIoEngine& self) -> PyIoEngine& { return self; })
      .def("__exit__", [](PyIoEngine& self, const py::args&) { self.close(); });
  m.def("crc32c", &py_crc32c, py::arg("data"), py::arg("crc") = 0,
        "CRC-32C (Castagnoli) of a contiguous buffer, continuing from `crc`");
}

}  // namespace moeweave::bindings
