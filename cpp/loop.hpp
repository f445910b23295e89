// The C++ core of a fastloop loop: the uv_loop_t, the ready queue, the timer
// heap and one iteration of the loop, which follows asyncio's
// BaseEventLoop._run_once:
//   1. poll for I/O: without blocking while callbacks are ready, otherwise
//      until the earliest timer is due;
//   2. move the timers that are due (by the monotonic clock, never early)
//      to the ready queue;
//   3. run the callbacks that were ready when step 3 began; what they
//      schedule runs in the next iteration.
//
// The GIL is released only while libuv waits in the kernel. libuv callbacks
// that touch Python take it back (GilFromLibuv) and keep it until the poll
// returns.
//
// Free-threaded Python (3.13t/3.14t) is NOT supported: the module does not
// declare Py_mod_gil, so importing it re-enables the GIL there. Everything
// above relies on the GIL serialising the loop thread and the threads that
// call call_soon_threadsafe: they push to ready_ and read sleeping_ under it;
// handles come from a free list that is a plain global array; hooks and
// interned strings are process globals set once. What support would need, to
// be built and tested on such an interpreter (none runs on our machines):
//   - call_soon_threadsafe appends to a queue of its own under a mutex (or a
//     lock-free MPSC list), which run_once splices into ready_ on the loop
//     thread; sleeping_ becomes an atomic read with acquire/release order
//     against that queue, so a wake-up is never lost;
//   - the handle free lists become per-thread (or are dropped) and the debug
//     counters atomic;
//   - every other entry point checks it runs on the loop's thread (asyncio's
//     loop is not thread-safe either; today the GIL hides races that would
//     then be memory errors), and the Python objects the core keeps
//     (protocols, the transports' buffers) are touched only there;
//   - the module declares Py_mod_gil = Py_MOD_GIL_NOT_USED, and the whole
//     suite, the sanitizer run (with TSan) and the conformance run pass on a
//     free-threaded build.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "handles.hpp"
#include "health.hpp"
#include "owner.hpp"
#include "poll.hpp"
#include "sockwait.hpp"
#include "timers.hpp"

namespace fastloop {

class SignalWakeup;
class LoopTimer;
class LoopWakeup;

// A FIFO of owned references, on a power-of-two ring buffer.
class ReadyQueue {
 public:
  ReadyQueue() : buf_(kInitial) {}
  bool empty() const noexcept { return size_ == 0; }
  size_t size() const noexcept { return size_; }
  // Steals the reference.
  void push(HandleObject* h) {
    if (size_ == buf_.size()) grow();
    buf_[(head_ + size_) & (buf_.size() - 1)] = h;
    ++size_;
  }
  // Returns the reference.
  HandleObject* pop() noexcept {
    HandleObject* h = buf_[head_];
    head_ = (head_ + 1) & (buf_.size() - 1);
    --size_;
    return h;
  }
  template <class F>
  void for_each(F&& f) const {
    for (size_t i = 0; i < size_; ++i) f(buf_[(head_ + i) & (buf_.size() - 1)]);
  }

 private:
  static constexpr size_t kInitial = 64;
  void grow() {
    std::vector<HandleObject*> bigger(buf_.size() * 2);
    for (size_t i = 0; i < size_; ++i) bigger[i] = buf_[(head_ + i) & (buf_.size() - 1)];
    buf_.swap(bigger);
    head_ = 0;
  }
  std::vector<HandleObject*> buf_;
  size_t head_ = 0;
  size_t size_ = 0;
};

class Loop {
 public:
  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // Initialises the libuv loop and the loop's own handles (timer, wake-up,
  // signal wake-up). False with the exception set (OSError(EMFILE) at fd
  // exhaustion, as asyncio's loop raises); nothing is left open then.
  bool open();

  // ---- fork ----
  // Called in the child of a fork (os.register_at_fork): the libuv loop's
  // epoll instance and wake-up eventfd are still the parent's, so before
  // this copy next polls or closes anything, it gets kernel state of its own
  // (uv_loop_fork). Deferred to then, because the fork may have happened
  // inside one of libuv's callbacks.
  // The monitor thread (health.hpp) did not follow into the child: one is
  // started there for the same work.
  void after_fork() noexcept;
  // Does what after_fork() deferred, if it is still to do (before the child
  // polls, or touches kernel state the parent shares).
  void detach_from_parent() noexcept;

  // ---- state ----
  bool closed() const noexcept { return closed_; }
  bool running() const noexcept { return thread_id_ != 0; }
  unsigned long thread_id() const noexcept { return thread_id_; }
  bool debug() const noexcept { return debug_; }
  // Counts the loop's polls: what libuv delivered in one poll has the same count.
  uint64_t poll_count() const noexcept { return poll_count_; }
  void set_debug(bool on) noexcept { debug_ = on; }
  uv_loop_t* uv() noexcept { return &uv_; }
  // The task factory (a new reference is kept), nullptr for asyncio.Task.
  PyObject* task_factory() const noexcept { return task_factory_; }
  void set_task_factory(PyObject* factory) noexcept {
    Py_XINCREF(factory);
    Py_XSETREF(task_factory_, factory);
  }

  // RuntimeError('Event loop is closed') unless open. False with it set.
  bool check_open() const noexcept;
  // Debug mode: RuntimeError when called from a thread other than the one
  // running the loop. False with it set.
  bool check_thread() const noexcept;

  // ---- scheduling (GIL held) ----
  // Queues `h` (a new reference is taken) to run in the next iteration's
  // callback phase. Protocol callbacks run while the loop polls (libuv calls
  // them there, not through the ready queue); what they schedule is kept
  // apart and joins the queue after this iteration's callbacks have been
  // counted, so that it runs in the next iteration, as with asyncio, where
  // the I/O callback itself would have run in this one.
  void push_ready(HandleObject* h) {
    Py_INCREF(h);
    if (polling_) {
      scheduled_while_polling_.push_back(h);
    } else {
      ready_.push(h);
    }
  }
  // Queues `h` for this iteration even while polling: an fd watcher's
  // handle (asyncio's selector events join the ready queue of the iteration
  // that polled them), a signal's or another thread's callback (asyncio
  // appends those to its ready queue whenever they come).
  void push_ready_now(HandleObject* h) {
    Py_INCREF(h);
    ready_.push(h);
  }
  // Takes a new reference to `h`.
  void push_timer(TimerHandleObject* h) { timers_.push(h); }
  void timer_cancelled() noexcept { timers_.note_cancelled(); }
  // Schedules callback(*args) in a copy of the current context, as
  // call_soon. False with an exception set.
  bool call_soon(PyObject* py_loop, PyObject* callback, PyObject* const* args, Py_ssize_t nargs);
  // From another thread: make a sleeping loop look at its ready queue.
  void wake_up() noexcept;

  // ---- running ----
  // Runs iterations until stop(); `self` is the Python loop object. Returns
  // false with an exception set when one propagates out of a callback.
  // `step`, when not null, is called for each iteration instead of the
  // native one: a _run_once the program replaced, as asyncio's run_forever
  // calls self._run_once().
  bool run_forever(PyObject* self, PyObject* step = nullptr);
  // One iteration, as BaseEventLoop._run_once: what the default _run_once
  // does, inside run_forever or on its own (then the loop counts as running
  // for the duration, as callbacks expect).
  bool run_one_iteration(PyObject* self);
  void stop() noexcept { stopping_ = true; }
  // Whether so many handles wait that the collector's work on their context
  // copies shows (handles.hpp, Tracking). Below this, untracking a copy and
  // tracking it again before it goes costs more than it saves (6% on
  // call_soon_chained, one handle at a time).
  bool many_pending() const noexcept {
    return ready_.size() + scheduled_while_polling_.size() + timers_.size() >= 256;
  }
  // Releases every callback and closes every libuv handle, then the libuv
  // loop. Idempotent. Refused (RuntimeError, false) while the loop runs: a
  // callback must not free the loop under its own iteration.
  bool close();

  // A libuv callback hit an exception that must leave run_forever (e.g.
  // KeyboardInterrupt from a signal): keep it and end the current poll.
  void defer_exception(PyObject* exc) noexcept;

  FdWatchers& fd_watchers() noexcept { return watchers_; }
  SockWaits& sock_waits() noexcept { return sock_waits_; }
  // Every handle owner with a live handle is registered here, from its
  // init until its close callback (see owner.hpp): the loop closes them when
  // it closes, and shows their Python owners to the garbage collector.
  void register_owner(HandleOwner* owner) noexcept;
  void unregister_owner(HandleOwner* owner) noexcept;
  // The buffer every non-buffered stream read lands in (one per loop).
  char* read_buffer() noexcept { return read_buffer_.data(); }
  size_t read_buffer_size() const noexcept { return read_buffer_.size(); }
  // The fd for signal.set_wakeup_fd(); -1 once the loop is closed.
  int signal_wakeup_fd() const noexcept;

  // Garbage collector support for the owning Python object.
  int traverse(visitproc visit, void* arg) const;
  void clear_references() noexcept;

  // ---- health (health.hpp) ----
  struct Metrics {
    uint64_t iterations, callbacks, io_events, ready, timers, fds, transports;
    int64_t idle_ns, active_ns;
  };
  Metrics metrics() const noexcept;
  LagHistogram& lag() noexcept { return lag_; }
  bool lag_running() const noexcept { return monitor_config_.lag_resolution_ns != 0; }
  // Each changes what the monitor thread watches for (0: off), starting
  // or stopping it; `py_self` is the Python loop. False with the exception
  // set (RuntimeError when closed).
  bool set_lag_resolution(PyObject* py_self, int64_t ns);
  bool set_slow_threshold(PyObject* py_self, int64_t ns);
  bool set_watchdog(PyObject* py_self, int64_t stall_ns, int64_t resolution_ns, int fd, int signum,
                    bool handler);
  const MonitorConfig& monitor_config() const noexcept { return monitor_config_; }

  // Saved thread state while the GIL is released around a blocking poll.
  PyThreadState* released_tstate_ = nullptr;

 private:
  friend class GilFromLibuv;
  // One iteration; run_once() marks it in progress (iterating_).
  bool run_once();
  bool run_iteration();
  // Could a poll deliver anything: an fd watcher, a transport, a request?
  bool has_io_sources() const noexcept;
  void poll_io(bool may_block);
  bool run_ready_in_debug(HandleObject* h);
  // The blocking poll is over and the GIL held again: count the idle time.
  void end_idle() noexcept {
    const int64_t t = now_ns();
    idle_ns_ += t - idle_start_ns_;
    idle_end_ns_ = t;
    pulse_.in_kernel.store(false, std::memory_order_relaxed);
  }
  // A lag sample fell due: take it (and clear the monitor's flag if set).
  void take_lag_sample(bool flagged);
  // The monitor flagged the callback `h` that just returned as slow: time
  // it, and report it. False with an exception to propagate.
  bool check_slow_callback(HandleObject* h);
  bool apply_monitor_config(PyObject* py_self, const MonitorConfig& config);
  static void wake_for_monitor(void* loop) noexcept;
  void stop_monitor() noexcept;
  void close_owners() noexcept;
  bool fail_open() noexcept;

  uv_loop_t uv_{};
  // The loop's own handles (HandleOwners that free themselves when closed).
  LoopTimer* timer_ = nullptr;    // armed at the earliest deadline before blocking
  LoopWakeup* wakeup_ = nullptr;  // call_soon_threadsafe's wake-up; keeps uv_run alive
  SignalWakeup* signals_ = nullptr;
  HandleOwner* owners_ = nullptr;  // head of the registered owners' list
  ReadyQueue ready_;
  std::vector<HandleObject*> scheduled_while_polling_;  // see push_ready()
  TimerHeap timers_;
  FdWatchers watchers_;
  SockWaits sock_waits_;
  std::vector<char> read_buffer_;

  PyObject* self_ = nullptr;  // borrowed: the Python object embedding this core
  PyObject* deferred_exc_ = nullptr;
  PyObject* task_factory_ = nullptr;
  unsigned long thread_id_ = 0;
  bool closed_ = false;
  bool forked_ = false;  // see after_fork()
  bool stopping_ = false;
  bool debug_ = false;
  bool sleeping_ = false;   // in a blocking poll; read and written with the GIL held
  bool polling_ = false;    // inside uv_run: libuv may be running protocol callbacks
  bool iterating_ = false;  // inside run_once(): its callbacks may not run another
  uint64_t poll_count_ = 0;
  bool uv_open_ = false;

  // Health (health.hpp). Times are CLOCK_MONOTONIC nanoseconds.
  Pulse pulse_;
  int64_t idle_ns_ = 0;        // blocked in polls, in all
  int64_t idle_start_ns_ = 0;  // the current blocking poll's start
  int64_t idle_end_ns_ = 0;    // when the last blocking poll ended
  int64_t run_ns_ = 0;         // running (run_forever or a lone iteration), in all
  int64_t run_start_ns_ = 0;   // the current run's start
  size_t python_owners_ = 0;   // registered owners a Python object owns: transports & co.
  int64_t lag_due_ns_ = 0;     // the loop thread's copy of pulse_.lag_due_ns
  LagHistogram lag_;
  MonitorConfig monitor_config_;
  std::unique_ptr<Monitor> monitor_;
  PyObject* monitor_loop_obj_ = nullptr;  // borrowed: the Python loop the monitor reports
};

// Makes sure the GIL is held for a libuv callback: if the loop released it
// around a blocking poll, takes it back, and keeps it for the rest of that
// uv_run. Safe because libuv only blocks in the poll itself, before any
// callback; keeping it means other threads cannot run between two callbacks
// of one iteration, as with asyncio, whose callbacks all run with the GIL.
class GilFromLibuv {
 public:
  explicit GilFromLibuv(Loop* loop) noexcept {
    if (PyThreadState* tstate = std::exchange(loop->released_tstate_, nullptr)) {
      PyEval_RestoreThread(tstate);
      loop->end_idle();
    }
    bump(loop->pulse_.io_events);
  }
  GilFromLibuv(const GilFromLibuv&) = delete;
  GilFromLibuv& operator=(const GilFromLibuv&) = delete;
};

// Makes libuv's process-wide state now, at import, while fds are available:
// libuv creates it with the first loop and aborts the process if it cannot
// (at fd exhaustion). False with the exception set.
bool init_libuv_globals() noexcept;

// The C++ core of a Python object that is a fastloop loop, or nullptr
// (not a loop, or its __init__ has not run).
Loop* core_of(PyObject* obj) noexcept;

}  // namespace fastloop
