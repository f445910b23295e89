// Helpers shared by the transports: the two halves of the stream transport
// (stream.cpp: opening, reading, closing; stream_write.cpp: writing and flow
// control) and the datagram transport (udp.cpp).
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>

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

}  // namespace fastloop::stream_detail
