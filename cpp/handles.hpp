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
  // `context` is the loop's own copy and, like this handle, not tracked by
  // the collector while only the loop's queue holds the handle (Tracking).
  bool context_untracked;
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

// Whether the garbage collector tracks a new handle.
//
// kQueued: for a handle that goes into exactly one of the loop's queues (the
// ready queue, or the timer heap then the ready queue) and nowhere else in the
// core: call_soon, call_soon_threadsafe, call_later, call_at. It is not
// tracked while the loop holds it: the loop's traverse visits what the handle
// holds (visit_queued), so a cycle through a pending callback is still found,
// and a burst of pending callbacks costs the collector nothing (without this,
// collections took 60% of call_soon_batched). Its fresh copy of the context
// is left untracked the same way when many handles wait (Loop::many_pending;
// the copies were most of what remained). When the loop lets go of it
// (release_queued) and something else still holds it, it becomes tracked.
// kTracked: every other handle (fd watchers keep theirs and queue them again).
enum class Tracking { kTracked, kQueued };

// Makes a handle. `context` is borrowed; nullptr or None means a copy of the
// current context. Returns a new reference or nullptr with an exception set.
HandleObject* new_handle(PyObject* loop, Loop* core, PyObject* callback, PyObject* const* args,
                         Py_ssize_t nargs, PyObject* context,
                         Tracking tracking = Tracking::kTracked) noexcept;
TimerHandleObject* new_timer_handle(PyObject* loop, Loop* core, double when, PyObject* callback,
                                    PyObject* const* args, Py_ssize_t nargs, PyObject* context,
                                    Tracking tracking = Tracking::kTracked) noexcept;

// For the loop's traverse: a tracked handle is visited, an untracked one's
// contents are (the loop holds the only queue reference to it).
int visit_queued(HandleObject* h, visitproc visit, void* arg) noexcept;
// Makes an untracked handle (and its own context copy) tracked again.
void track_handle(HandleObject* h) noexcept;
// Drops a queue's reference: a handle still held elsewhere is tracked first,
// so a cycle through it stays collectable once the loop no longer vouches for it.
inline void release_queued(HandleObject* h) noexcept {
  if (Py_REFCNT(h) > 1) track_handle(h);
  Py_DECREF(h);
}

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
