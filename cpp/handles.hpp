// Handle and TimerHandle: a callback, its arguments and its contextvars
// context, as asyncio.events.Handle / TimerHandle.
//
// These are plain CPython types rather than pybind11 classes: one is made for
// every call_soon, and a pybind11 instance costs an allocation plus an insert
// into pybind11's instance registry. Handles come from a free list and keep
// up to kInlineArgs arguments inline, so a call_soon allocates nothing but its
// context copy.
#pragma once

#include "pyutil.hpp"

namespace fastloop {

class Loop;

constexpr Py_ssize_t kInlineArgs = 3;

struct HandleObject {
  PyObject_HEAD PyObject* callback;  // nullptr once cancelled
  PyObject* context;                 // the contextvars.Context the callback runs in
  PyObject* loop;                    // the Python loop object (strong reference)
  Loop* core;                        // the C++ loop inside `loop`; valid while `loop` lives
  PyObject* args_tuple;              // the arguments when there are more than kInlineArgs
  PyObject* source_traceback;        // debug mode only: where the handle was made
  PyObject* cached_repr;             // debug mode only: repr saved at cancel()
  PyObject* weakreflist;             // weak references to this handle
  Py_ssize_t nargs;
  // slots[0] is scratch space lent to the callee (PY_VECTORCALL_ARGUMENTS_OFFSET);
  // the inline arguments are slots[1..nargs].
  PyObject* slots[1 + kInlineArgs];
  bool cancelled;
  bool running;  // cancel() during the callback defers releasing its references
};

struct TimerHandleObject : HandleObject {
  double when;
  bool scheduled;  // in the loop's timer heap
};

extern PyTypeObject HandleType;
extern PyTypeObject TimerHandleType;

bool init_handle_types(PyObject* module) noexcept;

// Checks a callback as asyncio's loop does: coroutines and coroutine functions
// are refused, so are non-callables. Returns false with TypeError set.
bool check_callback(PyObject* callback, const char* method) noexcept;

// call_at's `when` as the timer heap's deadline: what float() gives, and an
// int beyond a float's range is at plus or minus infinity (asyncio keeps any
// number it is given). False with the exception set (TypeError...).
bool deadline_of(PyObject* when, double* out) noexcept;

// Makes a handle. `context` is borrowed; nullptr or None means a copy of the
// current context. Returns a new reference or nullptr with an exception set.
HandleObject* new_handle(PyObject* loop, Loop* core, PyObject* callback, PyObject* const* args,
                         Py_ssize_t nargs, PyObject* context) noexcept;
TimerHandleObject* new_timer_handle(PyObject* loop, Loop* core, double when, PyObject* callback,
                                    PyObject* const* args, Py_ssize_t nargs,
                                    PyObject* context) noexcept;

// Runs the callback in its context, as Handle._run does. An exception from
// the callback goes to loop.call_exception_handler. Returns false when an
// exception must propagate out of the loop (SystemExit, KeyboardInterrupt, or
// an exception handler that raised); it is then set.
bool run_handle(HandleObject* h) noexcept;

// Handle.cancel() without the method-call overhead.
void cancel_handle(HandleObject* h) noexcept;

inline bool is_timer_handle(PyObject* o) noexcept {
  return Py_IS_TYPE(o, &TimerHandleType) || PyObject_TypeCheck(o, &TimerHandleType);
}

}  // namespace fastloop
