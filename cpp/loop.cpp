#include "loop.hpp"

#include <pthread.h>
#include <pythread.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <new>
#include <string_view>

#include "debug.hpp"
#include "errors.hpp"
#include "hooks.hpp"
#include "signals.hpp"

namespace fastloop {

// asyncio's selector transports read at most this much per call (max_size).
constexpr size_t kReadBufferSize = size_t{256} * 1024;

// The loop's timer: armed at the earliest deadline before the loop blocks.
class LoopTimer final : public HandleOwner {
 public:
  explicit LoopTimer(Loop* loop) noexcept : HandleOwner(loop, Lifetime::kSelf) {}
  bool init() noexcept {
    return init_handle(&timer_, nullptr,
                       [](uv_loop_t* l, uv_timer_t* t) { return uv_timer_init(l, t); });
  }
  bool active() const noexcept {
    return uv_is_active(reinterpret_cast<const uv_handle_t*>(&timer_)) != 0;
  }
  void start(uint64_t timeout_ms) noexcept {
    if (handle_open()) uv_timer_start(&timer_, on_timer, timeout_ms, 0);
  }
  void stop() noexcept {
    if (handle_open()) uv_timer_stop(&timer_);
  }

 private:
  static void on_timer(uv_timer_t* timer) noexcept {
    // run_once() moves due timers to the ready queue itself, against the
    // precise clock; this only has to end the poll. It must do so
    // explicitly: if libuv's millisecond clock ticks between arming and
    // uv_run(), the timer fires in uv_run's pre-poll timer pass, and the
    // poll would then block with no timer left. With the stop flag set,
    // libuv polls without blocking.
    uv_stop(timer->loop);
  }
  uv_timer_t timer_{};
};

// call_soon_threadsafe's wake-up. Its callback has nothing to do: the
// callbacks are already in the ready queue; the async only ends the poll.
class LoopWakeup final : public HandleOwner {
 public:
  explicit LoopWakeup(Loop* loop) noexcept : HandleOwner(loop, Lifetime::kSelf) {}
  bool init() noexcept {
    return init_handle(&async_, nullptr, [](uv_loop_t* l, uv_async_t* a) {
      return uv_async_init(l, a, [](uv_async_t* /*async*/) noexcept {});
    });
  }
  // Any thread; the GIL is held by the caller (see Loop::wake_up).
  void send() noexcept {
    if (handle_open()) uv_async_send(&async_);
  }

 private:
  uv_async_t async_{};
};

bool init_libuv_globals() noexcept {
  // uv_loop_init makes the signal-lock pipe shared by every loop of the
  // process (once); a throwaway loop is enough.
  uv_loop_t probe;
  const int err = uv_loop_init(&probe);
  if (err < 0) {
    set_uv_error(err);
    return false;
  }
  uv_loop_close(&probe);
  return true;
}

namespace {

// One of the loop's own handles, initialised; nullptr with the exception set.
// It deletes itself once closed; until its init succeeds it is ours to free.
template <class Owner>
Owner* make_owner(Loop* loop) noexcept {
  auto* owner = new (std::nothrow) Owner(loop);
  if (owner == nullptr) {
    PyErr_NoMemory();
    return nullptr;
  }
  if (!owner->init()) {
    delete owner;
    return nullptr;
  }
  return owner;
}

}  // namespace

Loop::Loop() : watchers_(this), sock_waits_(this), read_buffer_(kReadBufferSize) {}

namespace {

// libuv (1.44 at least) leaks its epoll fd when uv_loop_init fails after
// making it (at fd exhaustion, say): close it if it is there.
void close_leaked_backend(const uv_loop_t& loop) noexcept {
  const int fd = loop.backend_fd;
  if (fd <= 2) return;  // -1: never made; 0: not reached (memset)
  char path[64];
  char target[64] = {};
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(path, target, sizeof target - 1);
  if (n > 0 && std::string_view(target, static_cast<size_t>(n)) == "anon_inode:[eventpoll]") {
    ::close(fd);
  }
}

}  // namespace

bool Loop::open() {
  const int err = uv_loop_init(&uv_);
  if (err < 0) {
    closed_ = true;
    close_leaked_backend(uv_);
    set_uv_error(err);
    return false;
  }
  uv_open_ = true;
  FASTLOOP_COUNT(uv_loops, 1);
  timer_ = make_owner<LoopTimer>(this);
  if (timer_ == nullptr) return fail_open();
  wakeup_ = make_owner<LoopWakeup>(this);
  if (wakeup_ == nullptr) return fail_open();
  signals_ = SignalWakeup::create(this);
  if (signals_ == nullptr) return fail_open();
  return true;
}

bool Loop::fail_open() noexcept {
  // Close what was opened, keeping the exception that made open() fail.
  PyObject* exc = take_exception();
  close();
  restore_exception(exc);
  return false;
}

Loop::~Loop() {
  close();
}

int Loop::signal_wakeup_fd() const noexcept {
  return signals_ != nullptr ? signals_->write_fd() : -1;
}

void Loop::register_owner(HandleOwner* owner) noexcept {
  if (owner->lifetime_ == Lifetime::kPython) ++python_owners_;
  owner->prev_ = nullptr;
  owner->next_ = owners_;
  if (owners_ != nullptr) owners_->prev_ = owner;
  owners_ = owner;
}

void Loop::unregister_owner(HandleOwner* owner) noexcept {
  if (owner->lifetime_ == Lifetime::kPython) --python_owners_;
  if (owner->prev_ != nullptr) {
    owner->prev_->next_ = owner->next_;
  } else if (owners_ == owner) {
    owners_ = owner->next_;
  }
  if (owner->next_ != nullptr) owner->next_->prev_ = owner->prev_;
  owner->prev_ = owner->next_ = nullptr;
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
  HandleObject* h = new_handle(py_loop, this, callback, args, nargs, nullptr, Tracking::kQueued);
  if (h == nullptr) return false;
  push_ready(h);
  Py_DECREF(h);
  return true;
}

void Loop::wake_up() noexcept {
  // sleeping_ changes only with the GIL held, and so is read here: a loop
  // that is not sleeping will look at its ready queue before it blocks.
  if (sleeping_ && wakeup_ != nullptr) wakeup_->send();
}

void Loop::defer_exception(PyObject* exc) noexcept {
  if (deferred_exc_ == nullptr) {
    deferred_exc_ = exc;
  } else {
    Py_XDECREF(exc);  // the first one wins, as it would in asyncio
  }
  uv_stop(&uv_);
}

void Loop::after_fork() noexcept {
  forked_ = true;
  if (!monitor_) return;
  // The parent's monitor thread is not in this process, and its mutex may
  // have been held at the fork: leave the object alone (leaked) and start
  // a monitor of our own.
  static_cast<void>(monitor_.release());
  pulse_.attention.store(0, std::memory_order_relaxed);
  if (!apply_monitor_config(monitor_loop_obj_, monitor_config_)) {
    PyErr_WriteUnraisable(monitor_loop_obj_);
  }
}

void Loop::detach_from_parent() noexcept {
  if (!forked_) return;
  forked_ = false;
  if (uv_open_ && uv_loop_fork(&uv_) != 0) {
    // Without a loop of its own, the child must not touch the parent's epoll:
    // leave the libuv loop unclosed (the process image ends with it).
    uv_open_ = false;
    return;
  }
  sock_waits_.reset_after_fork();
}

void Loop::poll_io(bool may_block) {
  detach_from_parent();
  watchers_.stop_closed_fds();
  ++poll_count_;
  polling_ = true;
  if (!may_block) {
    uv_run(&uv_, UV_RUN_NOWAIT);
    polling_ = false;
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
    polling_ = false;
    return;
  }
  if (timeout_ms > 0) {
    // libuv counts from its cached time: refresh it so the timer is not early.
    uv_update_time(&uv_);
    timer_->start(static_cast<uint64_t>(timeout_ms));
  } else {
    timer_->stop();
  }
  sleeping_ = true;
  idle_start_ns_ = now_ns();
  // A lag sample falling due while the loop sleeps: the monitor thread flags
  // it, then wakes the loop if it sees it in the kernel. Either it sees
  // in_kernel, or the loop sees the flag here (both sequentially consistent).
  // The poll's timeout is left alone: a timeout costs every blocking
  // epoll_wait ~100 ns, where this costs one wake-up per sample.
  bool lag_due = false;
  if (lag_due_ns_ != 0) {
    pulse_.in_kernel.store(true, std::memory_order_seq_cst);
    lag_due = (pulse_.attention.load(std::memory_order_seq_cst) & kLagDue) != 0;
  } else {
    pulse_.in_kernel.store(true, std::memory_order_relaxed);  // no locked xchg per poll
  }
  // The GIL is released while libuv waits in the kernel: nothing here touches
  // Python, and callbacks that do take the GIL back (GilFromLibuv).
  released_tstate_ = PyEval_SaveThread();
  if (kDebugBuild && g_debug_counters.arm_delay_us > 0) {
    // Fault injection: let libuv's clock pass the deadline just armed.
    usleep(static_cast<useconds_t>(g_debug_counters.arm_delay_us));
  }
  uv_run(&uv_, lag_due ? UV_RUN_NOWAIT : UV_RUN_ONCE);
  // A callback may have taken the GIL back already (GilFromLibuv).
  if (released_tstate_ != nullptr) {
    PyEval_RestoreThread(std::exchange(released_tstate_, nullptr));
    end_idle();
  }
  sleeping_ = false;
  polling_ = false;
}

bool Loop::has_io_sources() const noexcept {
  // The wake-up async is always active, the timer only while armed; the
  // signal wake-up poll is unreferenced and so not counted.
  const unsigned own = 1 + (timer_ != nullptr && timer_->active() ? 1 : 0);
  return uv_.active_handles > own || uv_.active_reqs.count > 0;
}

bool Loop::run_once() {
  iterating_ = true;
  const bool ok = run_iteration();
  iterating_ = false;
  return ok;
}

bool Loop::run_iteration() {
  bump(pulse_.iterations);
  timers_.drop_cancelled_top();
  const int64_t polls_before = idle_end_ns_;
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
  if (lag_due_ns_ != 0) {
    // Due by the monitor's flag (a busy loop) or by the clock the end of a
    // blocking poll read (a loop that woke for the sample, or for I/O).
    const bool flagged = (pulse_.attention.load(std::memory_order_relaxed) & kLagDue) != 0;
    if (flagged || (idle_end_ns_ != polls_before && idle_end_ns_ >= lag_due_ns_)) {
      take_lag_sample(flagged);
    }
  }

  if (!timers_.empty()) {
    const double end = monotonic_seconds();
    while (!timers_.empty() && timers_.earliest() <= end) {
      TimerHandleObject* t = timers_.pop();
      if (t->cancelled) {
        release_queued(t);
      } else {
        ready_.push(t);  // the heap's reference moves to the ready queue
      }
    }
  }

  // Run only what is ready now; callbacks scheduled meanwhile (by this
  // iteration's protocol callbacks too) wait for the next iteration.
  const size_t ready_now = ready_.size();
  if (!scheduled_while_polling_.empty()) {
    for (HandleObject* h : scheduled_while_polling_) ready_.push(h);  // references move
    scheduled_while_polling_.clear();
  }
  for (size_t ntodo = ready_now; ntodo > 0; --ntodo) {
    HandleObject* h = ready_.pop();
    if (h->cancelled) {
      release_queued(h);
      continue;
    }
    bump(pulse_.callback_ticks);
    bool ok = debug_ ? run_ready_in_debug(h) : run_handle(h);
    bump(pulse_.callback_ticks);
    if ((pulse_.attention.load(std::memory_order_relaxed) & kSlowSuspect) != 0) [[unlikely]] {
      ok = check_slow_callback(h) && ok;
    }
    release_queued(h);
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

bool Loop::run_forever(PyObject* self, PyObject* step) {
  // fastloop.Loop.run_forever checks both first; the core's own entry must
  // not free or re-enter its state either.
  if (!check_open()) return false;
  if (running()) {
    PyErr_SetString(PyExc_RuntimeError, "This event loop is already running");
    return false;
  }
  self_ = self;
  thread_id_ = PyThread_get_thread_ident();
  pulse_.thread.store(static_cast<uint64_t>(pthread_self()), std::memory_order_relaxed);
  run_start_ns_ = now_ns();
  bool ok = true;
  for (;;) {
    if (step == nullptr) {
      ok = run_once();
    } else {
      Ref r(PyObject_CallNoArgs(step));
      ok = static_cast<bool>(r);
    }
    if (!ok || stopping_) break;
  }
  stopping_ = false;
  thread_id_ = 0;
  pulse_.thread.store(0, std::memory_order_relaxed);
  run_ns_ += now_ns() - run_start_ns_;
  return ok;
}

bool Loop::run_one_iteration(PyObject* self) {
  // asyncio's _run_once checks nothing; here a misuse would free or race the
  // loop's queues and libuv state, so each is refused as asyncio refuses
  // similar calls elsewhere.
  if (!check_open() || !check_thread()) return false;
  if (iterating_) {
    PyErr_SetString(PyExc_RuntimeError,
                    "Cannot run an iteration of the event loop from one of its callbacks");
    return false;
  }
  if (running()) return run_once();
  self_ = self;
  thread_id_ = PyThread_get_thread_ident();
  pulse_.thread.store(static_cast<uint64_t>(pthread_self()), std::memory_order_relaxed);
  run_start_ns_ = now_ns();
  const bool ok = run_once();
  thread_id_ = 0;
  pulse_.thread.store(0, std::memory_order_relaxed);
  run_ns_ += now_ns() - run_start_ns_;
  return ok;
}

bool Loop::close() {
  if (running()) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot close a running event loop");
    return false;
  }
  if (closed_ && !uv_open_) return true;
  closed_ = true;
  stop_monitor();
  monitor_config_ = MonitorConfig{};
  lag_due_ns_ = 0;
  pulse_.lag_due_ns.store(0, std::memory_order_relaxed);
  detach_from_parent();
  clear_references();
  if (!uv_open_) return true;
  // Every handle still open (transports, listeners, fd watchers, our own
  // timer, wake-up and signal poll) is closed, and libuv runs the close
  // callbacks below. (asyncio's close() leaves sockets to their own __del__;
  // libuv needs every handle closed before the loop.)
  close_owners();
  timer_ = nullptr;  // they free themselves in their close callbacks
  wakeup_ = nullptr;
  signals_ = nullptr;
  // Nothing is active any more, so these runs cannot block. A close callback
  // may run Python code that closes another handle: run until none is left.
  int err = UV_EBUSY;
  for (int i = 0; i < 16 && err == UV_EBUSY; ++i) {
    uv_run(&uv_, UV_RUN_NOWAIT);
    close_owners();
    err = uv_loop_close(&uv_);
  }
  if (err == 0) {
    FASTLOOP_COUNT(uv_loops, -1);
    uv_open_ = false;
  }
  // Otherwise a handle outside our owners is still open: the libuv loop is
  // leaked rather than freed under it.
  return true;
}

void Loop::close_owners() noexcept {
  // close_with_loop() changes states only; owners leave the list in their
  // close callbacks, which run inside uv_run.
  for (HandleOwner* o = owners_; o != nullptr; o = o->next_) o->close_with_loop();
}

void Loop::clear_references() noexcept {
  // Releasing a handle may run Python code that schedules more callbacks:
  // drain until empty.
  for (HandleObject* h : scheduled_while_polling_) ready_.push(h);
  scheduled_while_polling_.clear();
  while (!ready_.empty()) release_queued(ready_.pop());
  timers_.clear();
  watchers_.close_all();
  sock_waits_.close_all();
  while (!ready_.empty()) release_queued(ready_.pop());
  Py_CLEAR(deferred_exc_);
  Py_CLEAR(task_factory_);
}

// ---- health ----------------------------------------------------------------

Loop::Metrics Loop::metrics() const noexcept {
  const int64_t now = now_ns();
  int64_t idle = idle_ns_;
  if (pulse_.in_kernel.load(std::memory_order_relaxed)) idle += now - idle_start_ns_;
  int64_t ran = run_ns_;
  if (running()) ran += now - run_start_ns_;
  return Metrics{
      pulse_.iterations.load(std::memory_order_relaxed),
      pulse_.callback_ticks.load(std::memory_order_relaxed) / 2,
      pulse_.io_events.load(std::memory_order_relaxed),
      ready_.size() + scheduled_while_polling_.size(),
      timers_.size() - timers_.cancelled_count(),
      watchers_.watched(),
      python_owners_,
      idle,
      std::max<int64_t>(ran - idle, 0),
  };
}

void Loop::take_lag_sample(bool flagged) {
  if (flagged)
    pulse_.attention.fetch_and(~static_cast<uint32_t>(kLagDue), std::memory_order_relaxed);
  // Now, not when the poll ended: the protocol callbacks it ran are lag too.
  const int64_t now = now_ns();
  if (now < lag_due_ns_) return;
  lag_.record(now - lag_due_ns_);
  lag_due_ns_ = now + monitor_config_.lag_resolution_ns;
  pulse_.lag_due_ns.store(lag_due_ns_, std::memory_order_relaxed);
}

bool Loop::check_slow_callback(HandleObject* h) {
  pulse_.attention.fetch_and(~static_cast<uint32_t>(kSlowSuspect), std::memory_order_acquire);
  const uint64_t ran_as = pulse_.callback_ticks.load(std::memory_order_relaxed) - 1;
  if (pulse_.slow_ticks.load(std::memory_order_relaxed) != ran_as) return true;  // an older one
  const int64_t threshold = monitor_config_.slow_threshold_ns;
  const int64_t took = now_ns() - pulse_.slow_start_ns.load(std::memory_order_relaxed);
  if (threshold == 0 || took < threshold || g_hooks.report_slow_callback == nullptr) return true;
  // A callback that fails leaves its exception set: keep it across the report.
  PyObject* exc = PyErr_Occurred() != nullptr ? take_exception() : nullptr;
  Ref seconds(PyFloat_FromDouble(static_cast<double>(took) / 1e9));
  bool ok = static_cast<bool>(seconds);
  if (ok) {
    Ref r(PyObject_CallFunctionObjArgs(g_hooks.report_slow_callback, self_,
                                       reinterpret_cast<PyObject*>(h), seconds.get(), nullptr));
    ok = static_cast<bool>(r);
  }
  if (exc != nullptr) {
    if (!ok) PyErr_Clear();  // the callback's exception goes first
    restore_exception(exc);
    return true;
  }
  return ok;
}

bool Loop::apply_monitor_config(PyObject* py_self, const MonitorConfig& config) {
  monitor_config_ = config;
  monitor_loop_obj_ = py_self;
  if (!config.any()) {
    stop_monitor();
    return true;
  }
  if (monitor_) {
    monitor_->reconfigure(config);
    return true;
  }
  auto monitor = std::make_unique<Monitor>(&pulse_, py_self, config, &Loop::wake_for_monitor, this);
  if (!monitor->start()) return false;
  monitor_ = std::move(monitor);
  return true;
}

void Loop::wake_for_monitor(void* loop) noexcept {
  // From the monitor thread, without the GIL: the wake-up is made before the
  // monitor starts and closed after it stopped; uv_async_send is thread-safe.
  auto* self = static_cast<Loop*>(loop);
  if (self->wakeup_ != nullptr) self->wakeup_->send();
}

void Loop::stop_monitor() noexcept {
  if (!monitor_) return;
  monitor_->stop();
  monitor_.reset();
}

bool Loop::set_lag_resolution(PyObject* py_self, int64_t ns) {
  if (!check_open()) return false;
  MonitorConfig config = monitor_config_;
  config.lag_resolution_ns = ns;
  lag_due_ns_ = ns != 0 ? now_ns() + ns : 0;
  pulse_.lag_due_ns.store(lag_due_ns_, std::memory_order_relaxed);
  return apply_monitor_config(py_self, config);
}

bool Loop::set_slow_threshold(PyObject* py_self, int64_t ns) {
  if (!check_open()) return false;
  MonitorConfig config = monitor_config_;
  config.slow_threshold_ns = ns;
  return apply_monitor_config(py_self, config);
}

bool Loop::set_watchdog(PyObject* py_self, int64_t stall_ns, int64_t resolution_ns, int fd,
                        int signum, bool handler) {
  if (!check_open()) return false;
  MonitorConfig config = monitor_config_;
  config.stall_ns = stall_ns;
  config.stall_resolution_ns = resolution_ns;
  config.stall_fd = fd;
  config.stall_signum = signum;
  config.stall_handler = handler;
  return apply_monitor_config(py_self, config);
}

int Loop::traverse(visitproc visit, void* arg) const {
  int r = 0;
  // Handles the loop made untracked are visited through (handles.hpp, Tracking).
  ready_.for_each([&](HandleObject* h) {
    if (r == 0) r = visit_queued(h, visit, arg);
  });
  if (r != 0) return r;
  for (HandleObject* h : scheduled_while_polling_) {
    if ((r = visit_queued(h, visit, arg)) != 0) return r;
  }
  if ((r = timers_.traverse(visit, arg)) != 0) return r;
  if ((r = watchers_.traverse(visit, arg)) != 0) return r;
  if ((r = sock_waits_.traverse(visit, arg)) != 0) return r;
  Py_VISIT(task_factory_);
  // The Python objects kept alive for their active handles (owner.hpp): the
  // collector then sees a loop and its transports as one cycle and can
  // collect an abandoned loop (its __del__ closes it, which releases them).
  for (const HandleOwner* o = owners_; o != nullptr; o = o->next_) {
    if (o->loop_holds()) Py_VISIT(o->keep_alive_);
  }
  return 0;
}

}  // namespace fastloop
