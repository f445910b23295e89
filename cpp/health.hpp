// Loop health: what loop.metrics(), loop.utilization(), loop.monitor_lag(),
// loop.set_slow_callback_handler() and loop.start_watchdog() read.
//
// The costs, and where each is paid:
//   - Counters (Pulse): always on. The loop thread bumps plain counters with
//     relaxed atomics (a load and a store, no locked instruction) once per
//     iteration, twice per callback and once per libuv callback into Python.
//   - Idle time: always on. Two clock reads around each poll that blocks,
//     the one the core already brackets by releasing the GIL; a poll that
//     does not block is not idle and costs nothing. (libuv's own idle-time
//     metric, UV_METRICS_IDLE_TIME, makes every blocking poll a
//     zero-timeout epoll_wait first: one more syscall per iteration.)
//   - Everything else is paid only while asked for, and the loop thread
//     never reads the clock per callback or per iteration for it (a clock
//     read is 24 ns here, a whole call_soon callback 120 ns). A monitor
//     thread, which needs no GIL, watches the counters and raises an
//     `attention` flag the loop thread tests once per iteration and once per
//     callback:
//       * lag: when a sample falls due, the loop reads the clock at its next
//         iteration and records how late that is; a loop blocked in a poll
//         is woken for it by the monitor (its poll timeout stays as it is:
//         a timeout costs each blocking epoll_wait ~100 ns);
//       * slow callbacks: a callback the monitor sees running past the
//         threshold is flagged, and when it returns the loop reads the clock
//         once, for that callback only. The start is the monitor's estimate,
//         accurate to half its period (threshold / 10, 1 ms to 10 ms);
//       * stalls: no counter moves and the loop is not in a poll for
//         `stall` seconds. The monitor reports it (the stack of the loop's
//         thread is dumped by faulthandler's signal handler, which runs in
//         that thread and needs no GIL, or a Python handler is called with
//         the GIL) and reports again, with the duration, when it ends.
#pragma once

#include <Python.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "pyutil.hpp"  // now_ns()

namespace fastloop {

// Adds one to a counter that only the loop thread writes.
inline void bump(std::atomic<uint64_t>& counter) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

// Bits of Pulse::attention: set by the monitor thread, cleared by the loop.
enum Attention : uint32_t {
  kLagDue = 1,       // a lag sample is due
  kSlowSuspect = 2,  // the callback Pulse::slow_ticks names has run too long
};

// What the loop thread publishes for the monitor thread, and the monitor's
// flags back.
struct Pulse {
  std::atomic<uint64_t> iterations{0};
  // +1 before and +1 after each callback from the ready queue: odd while one runs.
  std::atomic<uint64_t> callback_ticks{0};
  std::atomic<uint64_t> io_events{0};  // libuv callbacks that called into Python
  std::atomic<bool> in_kernel{false};  // blocked in a poll, the GIL released
  // The pthread running the loop, 0 while it does not run.
  std::atomic<uint64_t> thread{0};
  std::atomic<uint32_t> attention{0};
  std::atomic<int64_t> lag_due_ns{0};     // next lag sample; 0 while no lag monitor runs
  std::atomic<uint64_t> slow_ticks{0};    // callback_ticks while the suspect runs
  std::atomic<int64_t> slow_start_ns{0};  // the suspect's estimated start
};

// How late the lag samples were, in nanoseconds: exact count, min, max, mean
// and standard deviation, and log-linear buckets for percentiles (32 per
// power of two: within 3.2% of the true value). 16 KiB whatever the range.
class LagHistogram {
 public:
  LagHistogram() : buckets_(kBuckets, 0) {}
  void record(int64_t ns) noexcept;
  void reset() noexcept;
  uint64_t count() const noexcept { return count_; }
  int64_t min() const noexcept { return count_ != 0 ? min_ : 0; }
  int64_t max() const noexcept { return max_; }
  double mean() const noexcept { return count_ != 0 ? mean_ : 0.0; }
  double stddev() const noexcept;
  // The value at or below which `percent` of the samples fall; 0 when empty.
  int64_t percentile(double percent) const noexcept;

 private:
  static constexpr int kSubBits = 5;
  static constexpr size_t kBuckets = size_t{64} << kSubBits;
  static size_t bucket_of(uint64_t v) noexcept;
  static uint64_t bucket_high(size_t index) noexcept;  // the largest value in a bucket
  std::vector<uint64_t> buckets_;
  uint64_t count_ = 0;
  int64_t min_ = 0;
  int64_t max_ = 0;
  double mean_ = 0.0;
  double m2_ = 0.0;  // Welford's running sum of squared deviations
};

// What the monitor thread watches for; 0 turns a part off.
struct MonitorConfig {
  int64_t lag_resolution_ns = 0;
  int64_t slow_threshold_ns = 0;
  int64_t stall_ns = 0;
  int64_t stall_resolution_ns = 0;
  // Reporting a stall: to a file (fd, with the stack dumped by the signal
  // faulthandler registered for it) or, when handler is set, through the
  // report_stall hook with the GIL.
  int stall_fd = -1;
  int stall_signum = 0;
  bool stall_handler = false;
  bool any() const noexcept {
    return lag_resolution_ns != 0 || slow_threshold_ns != 0 || stall_ns != 0;
  }
};

// The monitor thread. Made and stopped by its Loop with the GIL held.
class Monitor {
 public:
  // `loop_obj` (borrowed) is the Python loop the stall hook is given; the
  // loop stops the monitor before it goes.
  // `wake(wake_arg)` ends the loop's blocking poll (any thread, no GIL).
  Monitor(Pulse* pulse, PyObject* loop_obj, const MonitorConfig& config, void (*wake)(void*),
          void* wake_arg);
  ~Monitor();
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;
  bool start() noexcept;  // false with the exception set
  void reconfigure(const MonitorConfig& config) noexcept;
  // Ends the thread and waits for it, with the GIL released meanwhile (the
  // thread may be waiting for it to call a stall handler).
  void stop() noexcept;

 private:
  void run() noexcept;
  void watch_lag(int64_t now, int64_t* next) noexcept;
  void watch_slow(int64_t now, int64_t* next) noexcept;
  // True when something is to be reported (with the lock released).
  bool watch_stall(int64_t now, int64_t* next, bool* ended, double* seconds) noexcept;
  void report_stall(const MonitorConfig& config, bool ended, double seconds) noexcept;

  Pulse* pulse_;
  PyObject* loop_obj_;
  void (*wake_)(void*);
  void* wake_arg_;
  std::mutex mu_;
  std::condition_variable cv_;
  MonitorConfig config_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  // The monitor thread's own state.
  int64_t last_wake_ns_ = 0;
  uint64_t slow_seen_ticks_ = 0;
  int64_t slow_seen_ns_ = 0;    // when slow_seen_ticks_ was first seen
  int64_t slow_before_ns_ = 0;  // the wake before that
  uint64_t slow_flagged_ticks_ = 0;
  uint64_t stall_signature_ = 0;
  int64_t progress_ns_ = 0;  // when the loop was last seen moving
  int64_t stall_start_ns_ = 0;
  bool stalled_ = false;
};

}  // namespace fastloop
