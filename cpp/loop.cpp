#include "loop.hpp"

#include <pythread.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "debug.hpp"
#include "errors.hpp"
#include "hooks.hpp"

namespace fastloop {

// asyncio's selector transports read at most this much per call (max_size).
constexpr size_t kReadBufferSize = 256 * 1024;

Loop::Loop() : watchers_(this), read_buffer_(kReadBufferSize) {
  int err = uv_loop_init(&uv_);
  if (err < 0) throw std::runtime_error(uv_strerror(err));
  uv_open_ = true;
  FASTLOOP_COUNT(uv_loops, 1);
  uv_timer_init(&uv_, &timer_);
  timer_.data = this;
  uv_async_init(&uv_, &wakeup_, on_wakeup);
  wakeup_.data = this;
  signals_ = std::make_unique<SignalWakeup>(this);
}

Loop::~Loop() {
  close();
}

bool Loop::check_open() const noexcept {
  if (!closed_) return true;
  PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
  return false;
}

bool Loop::check_thread() const noexcept {
  if (thread_id_ == 0 || thread_id_ == PyThread_get_thread_ident()) return true;
  PyErr_SetString(PyExc_RuntimeError,
                  "Non-thread-safe operation invoked on an event loop other than the current one");
  return false;
}

bool Loop::call_soon(PyObject* py_loop, PyObject* callback, PyObject* const* args,
                     Py_ssize_t nargs) {
  HandleObject* h = new_handle(py_loop, this, callback, args, nargs, nullptr);
  if (h == nullptr) return false;
  ready_.push(h);  // the new reference moves to the queue
  return true;
}

void Loop::wake_up() noexcept {
  // sleeping_ changes only with the GIL held, and so is read here: a loop
  // that is not sleeping will look at its ready queue before it blocks.
  if (sleeping_) uv_async_send(&wakeup_);
}

void Loop::on_wakeup(uv_async_t* /*async*/) noexcept {
  // Nothing to do: the callbacks are already in the ready queue.
}

void Loop::on_timer(uv_timer_t* timer) noexcept {
  // run_once() moves due timers to the ready queue itself, against the
  // precise clock; this only has to end the poll. It must do so explicitly:
  // if libuv's millisecond clock ticks between arming and uv_run(), the timer
  // fires in uv_run's pre-poll timer pass, and the poll would then block with
  // no timer left. With the stop flag set, libuv polls without blocking.
  uv_stop(timer->loop);
}

void Loop::defer_exception(PyObject* exc) noexcept {
  if (deferred_exc_ == nullptr) {
    deferred_exc_ = exc;
  } else {
    Py_XDECREF(exc);  // the first one wins, as it would in asyncio
  }
  uv_stop(&uv_);
}

void Loop::detach_from_parent() noexcept {
  if (!forked_) return;
  forked_ = false;
  if (uv_open_ && uv_loop_fork(&uv_) != 0) {
    // Without a loop of its own, the child must not touch the parent's epoll:
    // leave the libuv loop unclosed (the process image ends with it).
    uv_open_ = false;
  }
}

void Loop::poll_io(bool may_block) {
  detach_from_parent();
  watchers_.stop_closed_fds();
  if (!may_block) {
    uv_run(&uv_, UV_RUN_NOWAIT);
    return;
  }
  int64_t timeout_ms = -1;
  if (!timers_.empty()) {
    // Capped at a day: the loop re-arms, and the cast stays defined for
    // deadlines at infinity.
    const double delay = std::min(timers_.earliest() - monotonic_seconds(), 86400.0);
    timeout_ms = delay <= 0 ? 0 : static_cast<int64_t>(std::ceil(delay * 1e3));
  }
  if (timeout_ms == 0) {
    uv_run(&uv_, UV_RUN_NOWAIT);
    return;
  }
  if (timeout_ms > 0) {
    // libuv counts from its cached time: refresh it so the timer is not early.
    uv_update_time(&uv_);
    uv_timer_start(&timer_, on_timer, static_cast<uint64_t>(timeout_ms), 0);
  } else {
    uv_timer_stop(&timer_);
  }
  sleeping_ = true;
  // The GIL is released while libuv waits in the kernel: nothing here touches
  // Python, and callbacks that do take the GIL back (GilFromLibuv).
  released_tstate_ = PyEval_SaveThread();
  uv_run(&uv_, UV_RUN_ONCE);
  PyEval_RestoreThread(released_tstate_);
  released_tstate_ = nullptr;
  sleeping_ = false;
}

bool Loop::has_io_sources() const noexcept {
  // The wake-up async is always active, the timer only while armed; the
  // signal wake-up poll is unreferenced and so not counted.
  const unsigned own = 1 + (uv_is_active(reinterpret_cast<const uv_handle_t*>(&timer_)) ? 1 : 0);
  return uv_.active_handles > own || uv_.active_reqs.count > 0;
}

bool Loop::run_once() {
  timers_.drop_cancelled_top();
  if (ready_.empty() && !stopping_) {
    poll_io(true);
  } else if (has_io_sources()) {
    poll_io(false);
  } else if (PyErr_CheckSignals() < 0) {
    // Nothing can become ready through libuv, so the kernel poll is skipped;
    // signals still run their Python handlers at once (add_signal_handler's
    // handlers queue their callbacks from there).
    return false;
  }
  if (deferred_exc_ != nullptr) {
    restore_exception(deferred_exc_);
    deferred_exc_ = nullptr;
    return false;
  }

  if (!timers_.empty()) {
    const double end = monotonic_seconds();
    while (!timers_.empty() && timers_.earliest() <= end) {
      TimerHandleObject* t = timers_.pop();
      if (t->cancelled) {
        Py_DECREF(t);
      } else {
        ready_.push(t);  // the heap's reference moves to the ready queue
      }
    }
  }

  // Run only what is ready now; callbacks scheduled meanwhile wait for the
  // next iteration.
  for (size_t ntodo = ready_.size(); ntodo > 0; --ntodo) {
    HandleObject* h = ready_.pop();
    if (h->cancelled) {
      Py_DECREF(h);
      continue;
    }
    const bool ok = debug_ ? run_ready_in_debug(h) : run_handle(h);
    Py_DECREF(h);
    if (!ok) return false;
  }
  return true;
}

bool Loop::run_ready_in_debug(HandleObject* h) {
  const double t0 = monotonic_seconds();
  if (!run_handle(h)) return false;
  const double dt = monotonic_seconds() - t0;
  Ref limit(PyObject_GetAttr(self_, g_str.slow_callback_duration));
  if (!limit) return false;
  const double seconds = PyFloat_AsDouble(limit.get());
  if (seconds == -1.0 && PyErr_Occurred()) return false;
  if (dt >= seconds) {
    Ref dt_obj(PyFloat_FromDouble(dt));
    if (!dt_obj) return false;
    Ref r(PyObject_CallFunctionObjArgs(g_hooks.log_slow_callback, reinterpret_cast<PyObject*>(h),
                                       dt_obj.get(), nullptr));
    if (!r) return false;
  }
  return true;
}

bool Loop::run_forever(PyObject* self) {
  self_ = self;
  thread_id_ = PyThread_get_thread_ident();
  bool ok = true;
  for (;;) {
    if (!run_once()) {
      ok = false;
      break;
    }
    if (stopping_) break;
  }
  stopping_ = false;
  thread_id_ = 0;
  return ok;
}

void Loop::close() {
  if (closed_) return;
  closed_ = true;
  detach_from_parent();
  clear_references();
  // Close the transports and listeners still open; their close callbacks
  // run below. (asyncio's close() leaves sockets to their own __del__.)
  while (!resources_.empty()) {
    LoopResource* r = *resources_.begin();
    resources_.erase(resources_.begin());
    r->close_with_loop();
  }
  if (signals_) signals_->close();
  if (!uv_open_) return;
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&wakeup_), nullptr);
  // Let libuv run the close callbacks; nothing is active any more, so this
  // cannot block.
  int err = UV_EBUSY;
  for (int i = 0; i < 16 && err == UV_EBUSY; ++i) {
    uv_run(&uv_, UV_RUN_NOWAIT);
    err = uv_loop_close(&uv_);
  }
  if (err == 0) FASTLOOP_COUNT(uv_loops, -1);
  uv_open_ = false;
}

void Loop::clear_references() noexcept {
  // Releasing a handle may run Python code that schedules more callbacks:
  // drain until empty.
  while (!ready_.empty()) Py_DECREF(ready_.pop());
  timers_.clear();
  watchers_.close_all();
  while (!ready_.empty()) Py_DECREF(ready_.pop());
  Py_CLEAR(deferred_exc_);
  Py_CLEAR(task_factory_);
}

int Loop::traverse(visitproc visit, void* arg) const {
  int r = 0;
  ready_.for_each([&](HandleObject* h) {
    if (r == 0) r = visit(reinterpret_cast<PyObject*>(h), arg);
  });
  if (r != 0) return r;
  if ((r = timers_.traverse(visit, arg)) != 0) return r;
  if ((r = watchers_.traverse(visit, arg)) != 0) return r;
  Py_VISIT(task_factory_);
  return 0;
}

}  // namespace fastloop
