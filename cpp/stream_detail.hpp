// Helpers shared by the two halves of the stream transport (stream.cpp:
// opening, reading, closing; stream_write.cpp: writing and flow control).
#pragma once

#include <uv.h>

#include <cstddef>

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

}  // namespace fastloop::stream_detail
