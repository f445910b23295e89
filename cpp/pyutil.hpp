// Small helpers over CPython's C API shared by the core: an owning reference,
// exception capture that works on every supported Python, and the clock.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <ctime>
#include <utility>

namespace fastloop {

// An owning PyObject reference (one Py_DECREF on destruction).
class Ref {
 public:
  Ref() = default;
  explicit Ref(PyObject* owned) noexcept : p_(owned) {}
  static Ref borrow(PyObject* p) noexcept {
    Py_XINCREF(p);
    return Ref(p);
  }
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  Ref(Ref&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Ref& operator=(Ref&& o) noexcept {
    if (this != &o) {
      PyObject* old = std::exchange(p_, std::exchange(o.p_, nullptr));
      Py_XDECREF(old);
    }
    return *this;
  }
  ~Ref() { Py_XDECREF(p_); }

  PyObject* get() const noexcept { return p_; }
  PyObject* release() noexcept { return std::exchange(p_, nullptr); }
  explicit operator bool() const noexcept { return p_ != nullptr; }

 private:
  PyObject* p_ = nullptr;
};

// Takes the raised exception (normalized, traceback attached) out of the
// error indicator. Returns a new reference, or nullptr when nothing was raised.
inline PyObject* take_exception() noexcept {
#if PY_VERSION_HEX >= 0x030C0000
  return PyErr_GetRaisedException();
#else
  PyObject* type = nullptr;
  PyObject* value = nullptr;
  PyObject* tb = nullptr;
  PyErr_Fetch(&type, &value, &tb);
  if (type == nullptr) return nullptr;
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb != nullptr && value != nullptr) PyException_SetTraceback(value, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return value;
#endif
}

// Puts an exception taken with take_exception() back (steals the reference).
inline void restore_exception(PyObject* exc) noexcept {
#if PY_VERSION_HEX >= 0x030C0000
  PyErr_SetRaisedException(exc);
#else
  auto* type = reinterpret_cast<PyObject*>(Py_TYPE(exc));
  Py_INCREF(type);
  PyErr_Restore(type, exc, PyException_GetTraceback(exc));
#endif
}

// The clock of time.monotonic(), with the same conversion to seconds, so
// loop.time() and time.monotonic() can be compared directly.
inline int64_t now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}
inline double monotonic_seconds() noexcept {
  return static_cast<double>(now_ns()) / 1e9;
}

// Interned strings used on hot paths, created once at module init.
struct Strings {
  PyObject* context;
  PyObject* loop;
  PyObject* name;
  PyObject* done;  // Future methods the core calls
  PyObject* set_result;
  PyObject* set_exception;
  PyObject* slow_callback_duration;
  PyObject* kw_loop;           // ("loop",)
  PyObject* kw_loop_name_ctx;  // ("loop", "name", "context")
  PyObject* send_raised;       // asyncio's warning for writes to a lost connection
  // Protocol and transport methods the core calls, looked up at each call
  // as asyncio does.
  PyObject* data_received;
  PyObject* datagram_received;
  PyObject* error_received;
  PyObject* get_buffer;
  PyObject* buffer_updated;
  PyObject* eof_received;
  PyObject* connection_lost;
  PyObject* pause_writing;
  PyObject* resume_writing;
  PyObject* call_connection_lost;  // "_call_connection_lost"
  PyObject* detach;
  PyObject* on_connection;    // "_on_connection" (the Python listener)
  PyObject* on_accept_error;  // "_on_accept_error"
  PyObject* run;              // Context.run
  PyObject* read_ready;       // "_read_ready" (the datagram transport's handles)
  PyObject* sendto_ready;     // "_sendto_ready"
  PyObject* recvfrom;         // socket methods the datagram transport falls back on
  PyObject* send;
  PyObject* sendto;
  PyObject* native;  // "_native": a Python transport's native half (NativeMethod)
  PyObject* recv;    // socket methods sock_recv & co. call (sockwait.hpp)
  PyObject* recv_into;
  PyObject* gettimeout;
  PyObject* fileno;
};
extern Strings g_str;
bool init_strings() noexcept;

}  // namespace fastloop
