// Helpers shared by the transports: the two halves of the stream transport
// (stream.cpp: opening, reading, closing; stream_write.cpp: writing and flow
// control) and the datagram transport (udp.cpp).
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>

#include "hooks.hpp"
#include "loop.hpp"
#include "pyutil.hpp"

namespace fastloop::stream_detail {

// Calls protocol.<name>(arg), looking the method up now, as asyncio does.
inline PyObject* call_method1(PyObject* protocol, PyObject* name, PyObject* arg) noexcept {
  PyObject* args[2] = {protocol, arg};
  return PyObject_VectorcallMethod(name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
}

inline PyObject* call_method0(PyObject* protocol, PyObject* name) noexcept {
  return PyObject_VectorcallMethod(name, &protocol, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
}

// A libuv buffer of any size (uv_buf_init takes an unsigned int length, which
// would cut a write of 4 GiB or more to its length modulo 2**32).
inline uv_buf_t make_buf(const char* base, size_t len) noexcept {
  uv_buf_t b;
  b.base = const_cast<char*>(base);
  b.len = len;
  return b;
}

inline bool is_exit_exception() noexcept {
  return PyErr_ExceptionMatches(PyExc_SystemExit) ||
         PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

// A write-buffer limit, already checked by asyncio's own
// _FlowControlMixin._set_write_buffer_limits (any real number >= 0), as a
// byte count: the buffer size is compared with it as an integer, so a
// fraction rounds down, and what does not fit a size_t is no limit.
inline bool byte_limit(PyObject* value, size_t* out) {
  if (PyLong_Check(value)) {
    const size_t n = PyLong_AsSize_t(value);
    if (n == static_cast<size_t>(-1) && PyErr_Occurred()) {
      if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return false;
      PyErr_Clear();
      const int negative = PyObject_RichCompareBool(value, Py_False, Py_LT);
      if (negative < 0) return false;
      *out = negative == 1 ? 0 : SIZE_MAX;
      return true;
    }
    *out = n;
    return true;
  }
  const double d = PyFloat_AsDouble(value);
  if (d == -1.0 && PyErr_Occurred()) return false;
  if (!(d > 0)) {
    *out = 0;
  } else if (d >= 18446744073709551616.0) {
    *out = SIZE_MAX;
  } else {
    *out = static_cast<size_t>(d);
  }
  return true;
}

// asyncio's _FlowControlMixin on the native side of both transports: the
// write-buffer limits (computed and checked by asyncio's own mixin in Python,
// kept there for get_write_buffer_limits) and whether the protocol was told
// to pause. A failing pause_writing()/resume_writing() is reported, not
// fatal, as asyncio goes on; SystemExit and KeyboardInterrupt leave the loop.
class WriteFlowControl {
 public:
  bool paused() const noexcept { return paused_; }
  // False with the exception set when a limit is not a number.
  bool set_limits(PyObject* high, PyObject* low) {
    size_t hi = 0;
    size_t lo = 0;
    if (!byte_limit(high, &hi) || !byte_limit(low, &lo)) return false;
    high_ = hi;
    low_ = lo;
    return true;
  }
  // protocol.pause_writing() once `buffered` is over the high-water mark.
  void maybe_pause(size_t buffered, PyObject* protocol, PyObject* transport, Loop* loop) {
    if (buffered <= high_ || paused_ || protocol == nullptr) return;
    paused_ = true;
    call(protocol, g_str.pause_writing, "protocol.pause_writing() failed", transport, loop);
  }
  // protocol.resume_writing() once `buffered` is back to the low-water mark.
  void maybe_resume(size_t buffered, PyObject* protocol, PyObject* transport, Loop* loop) {
    if (!paused_ || buffered > low_ || protocol == nullptr) return;
    paused_ = false;
    call(protocol, g_str.resume_writing, "protocol.resume_writing() failed", transport, loop);
  }

 private:
  static void call(PyObject* protocol, PyObject* method, const char* message, PyObject* transport,
                   Loop* loop) {
    Ref r(call_method0(protocol, method));
    if (r) return;
    if (is_exit_exception()) {
      loop->defer_exception(take_exception());
      return;
    }
    Ref exc(take_exception());
    Ref rr(PyObject_CallFunction(g_hooks.transport_error, "OOsO", transport, exc.get(), message,
                                 Py_False));
    if (!rr) PyErr_WriteUnraisable(transport);
  }

  size_t high_ = size_t{64} * 1024;
  size_t low_ = size_t{16} * 1024;
  bool paused_ = false;
};

}  // namespace fastloop::stream_detail
