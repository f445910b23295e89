#include "health.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>

#include "hooks.hpp"

namespace fastloop {

// ---- LagHistogram ------------------------------------------------------------

size_t LagHistogram::bucket_of(uint64_t v) noexcept {
  constexpr uint64_t kLinear = uint64_t{1} << kSubBits;
  if (v < kLinear) return static_cast<size_t>(v);
  const int e = 63 - std::countl_zero(v);  // >= kSubBits
  const uint64_t sub = (v >> (e - kSubBits)) & (kLinear - 1);
  return (static_cast<size_t>(e - kSubBits + 1) << kSubBits) + static_cast<size_t>(sub);
}

uint64_t LagHistogram::bucket_high(size_t index) noexcept {
  constexpr size_t kLinear = size_t{1} << kSubBits;
  if (index < kLinear) return index;
  const int e = static_cast<int>(index >> kSubBits) + kSubBits - 1;
  const uint64_t sub = index & (kLinear - 1);
  const uint64_t low = (kLinear + sub) << (e - kSubBits);
  return low + (uint64_t{1} << (e - kSubBits)) - 1;
}

void LagHistogram::record(int64_t ns) noexcept {
  ns = std::max<int64_t>(ns, 0);
  ++buckets_[bucket_of(static_cast<uint64_t>(ns))];
  if (count_ == 0 || ns < min_) min_ = ns;
  max_ = std::max(max_, ns);
  ++count_;
  const auto x = static_cast<double>(ns);
  const double delta = x - mean_;
  mean_ += delta / static_cast<double>(count_);
  m2_ += delta * (x - mean_);
}

void LagHistogram::reset() noexcept {
  std::fill(buckets_.begin(), buckets_.end(), 0);
  count_ = 0;
  min_ = max_ = 0;
  mean_ = m2_ = 0.0;
}

double LagHistogram::stddev() const noexcept {
  return count_ > 1 ? std::sqrt(m2_ / static_cast<double>(count_)) : 0.0;
}

int64_t LagHistogram::percentile(double percent) const noexcept {
  if (count_ == 0) return 0;
  const double wanted = std::ceil(percent / 100.0 * static_cast<double>(count_));
  const uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(wanted));
  uint64_t seen = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    seen += buckets_[i];
    if (seen >= rank) {
      const auto high = static_cast<int64_t>(std::min<uint64_t>(bucket_high(i), INT64_MAX));
      return std::clamp(high, min_, max_);
    }
  }
  return max_;
}

// ---- Monitor -----------------------------------------------------------------

namespace {

constexpr int64_t kMs = 1000000;

// How often slow callbacks are looked for: the start of one is known to
// half of this. At the default threshold (0.1 s) it is the lag monitor's
// default resolution, so the two share the monitor's wake-ups.
int64_t slow_period(int64_t threshold_ns) noexcept {
  return std::clamp<int64_t>(threshold_ns / 10, kMs, 10 * kMs);
}

bool finalizing() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

void write_all(int fd, const char* text, size_t n) noexcept {
  while (n > 0) {
    const ssize_t w = ::write(fd, text, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    text += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

Monitor::Monitor(Pulse* pulse, PyObject* loop_obj, const MonitorConfig& config, void (*wake)(void*),
                 void* wake_arg)
    : pulse_(pulse), loop_obj_(loop_obj), wake_(wake), wake_arg_(wake_arg), config_(config) {}

Monitor::~Monitor() {
  // stop() ran (the loop's close), or this is a child of fork, where the
  // loop leaks its parent's monitor instead of destroying it.
  if (thread_.joinable()) thread_.detach();
}

bool Monitor::start() noexcept {
  try {
    thread_ = std::thread([this] { run(); });
    // Named here, not by the thread itself: named once start() returns.
    pthread_setname_np(thread_.native_handle(), "fastloop-mon");
  } catch (const std::system_error& e) {
    PyErr_Format(PyExc_RuntimeError, "can't start the fastloop monitor thread: %s", e.what());
    return false;
  }
  return true;
}

void Monitor::reconfigure(const MonitorConfig& config) noexcept {
  {
    const std::lock_guard<std::mutex> lock(mu_);
    config_ = config;
    // A watchdog started again watches from now.
    progress_ns_ = 0;
    stalled_ = false;
  }
  cv_.notify_one();
}

void Monitor::stop() noexcept {
  {
    const std::lock_guard<std::mutex> lock(mu_);
    stopping_.store(true);
  }
  cv_.notify_one();
  if (!thread_.joinable()) return;
  Py_BEGIN_ALLOW_THREADS thread_.join();
  Py_END_ALLOW_THREADS
}

void Monitor::watch_lag(int64_t now, int64_t* next) noexcept {
  if (config_.lag_resolution_ns == 0) return;
  const int64_t due = pulse_->lag_due_ns.load(std::memory_order_relaxed);
  if (due == 0) return;
  if (now >= due) {
    // Flag, then wake a sleeping loop (see Loop::poll_io for the order).
    pulse_->attention.fetch_or(kLagDue, std::memory_order_seq_cst);
    if (pulse_->in_kernel.load(std::memory_order_seq_cst)) wake_(wake_arg_);
    // The loop moves the due time when it takes the sample; until then,
    // look again a resolution later.
    *next = std::min(*next, now + config_.lag_resolution_ns);
  } else {
    *next = std::min(*next, due);
  }
}

void Monitor::watch_slow(int64_t now, int64_t* next) noexcept {
  const int64_t threshold = config_.slow_threshold_ns;
  if (threshold == 0) return;
  const int64_t period = slow_period(threshold);
  *next = std::min(*next, now + period);
  const uint64_t ticks = pulse_->callback_ticks.load(std::memory_order_relaxed);
  if ((ticks & 1) == 0) return;  // between callbacks
  if (ticks != slow_seen_ticks_) {
    // A callback began since the last wake.
    slow_seen_ticks_ = ticks;
    slow_seen_ns_ = now;
    slow_before_ns_ = last_wake_ns_ != 0 ? last_wake_ns_ : now;
    return;
  }
  const int64_t start = slow_before_ns_ + (slow_seen_ns_ - slow_before_ns_) / 2;
  if (ticks == slow_flagged_ticks_ || now - start < threshold - period) return;
  slow_flagged_ticks_ = ticks;
  pulse_->slow_start_ns.store(start, std::memory_order_relaxed);
  pulse_->slow_ticks.store(ticks, std::memory_order_relaxed);
  pulse_->attention.fetch_or(kSlowSuspect, std::memory_order_release);
}

bool Monitor::watch_stall(int64_t now, int64_t* next, bool* ended, double* seconds) noexcept {
  if (config_.stall_ns == 0) return false;
  *next = std::min(*next, now + config_.stall_resolution_ns);
  const bool running = pulse_->thread.load(std::memory_order_relaxed) != 0;
  const bool in_kernel = pulse_->in_kernel.load(std::memory_order_relaxed);
  const uint64_t signature = pulse_->iterations.load(std::memory_order_relaxed) +
                             pulse_->callback_ticks.load(std::memory_order_relaxed) +
                             pulse_->io_events.load(std::memory_order_relaxed);
  if (!running || in_kernel || signature != stall_signature_ || progress_ns_ == 0) {
    // Moving (or not running): the loop did something since the last wake.
    stall_signature_ = signature;
    progress_ns_ = now;
    if (!stalled_) return false;
    stalled_ = false;
    *ended = true;
    *seconds = static_cast<double>(now - stall_start_ns_) / 1e9;
    return true;
  }
  if (stalled_ || now - progress_ns_ < config_.stall_ns) return false;
  stalled_ = true;
  stall_start_ns_ = progress_ns_;
  *ended = false;
  *seconds = static_cast<double>(now - stall_start_ns_) / 1e9;
  return true;
}

void Monitor::report_stall(const MonitorConfig& config, bool ended, double seconds) noexcept {
  if (finalizing()) return;
  const uint64_t thread = pulse_->thread.load(std::memory_order_relaxed);
  if (!config.stall_handler) {
    char line[200];
    const int n =
        ended ? std::snprintf(line, sizeof line,
                              "fastloop: the event loop polled again after a stall of %.3f s\n",
                              seconds)
              : std::snprintf(line, sizeof line,
                              "fastloop: the event loop has not polled for %.3f s; "
                              "the stack of its thread:\n",
                              seconds);
    if (n > 0) write_all(config.stall_fd, line, std::min(static_cast<size_t>(n), sizeof line - 1));
    if (ended || thread == 0) return;
    // faulthandler's handler for this signal dumps the stack of the thread
    // it runs in: the loop's, whether that holds the GIL or not. Without a
    // handler (unregistered behind our back), the signal's default action
    // would end the process: say so instead.
    struct sigaction current {};
    if (sigaction(config.stall_signum, nullptr, &current) != 0 || current.sa_handler == SIG_DFL ||
        current.sa_handler == SIG_IGN) {
      const int m = std::snprintf(line, sizeof line,
                                  "fastloop: (no handler for signal %d any more: no stack)\n",
                                  config.stall_signum);
      if (m > 0)
        write_all(config.stall_fd, line, std::min(static_cast<size_t>(m), sizeof line - 1));
      return;
    }
    pthread_kill(static_cast<pthread_t>(thread), config.stall_signum);
    return;
  }
  const PyGILState_STATE gil = PyGILState_Ensure();
  // stop() is called with the GIL held: once it is ours, the loop object is
  // still there unless stop() began.
  if (!stopping_.load()) {
    PyObject* r = PyObject_CallFunction(g_hooks.report_stall, "OKdO", loop_obj_,
                                        static_cast<unsigned long long>(thread), seconds,
                                        ended ? Py_True : Py_False);
    if (r == nullptr) {
      PyErr_WriteUnraisable(loop_obj_);
    } else {
      Py_DECREF(r);
    }
  }
  PyGILState_Release(gil);
}

void Monitor::run() noexcept {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_.load()) {
    const int64_t now = now_ns();
    int64_t next = now + 1000 * kMs;
    watch_lag(now, &next);
    watch_slow(now, &next);
    bool ended = false;
    double seconds = 0;
    const bool report = watch_stall(now, &next, &ended, &seconds);
    last_wake_ns_ = now;
    if (report) {
      const MonitorConfig config = config_;
      lock.unlock();
      report_stall(config, ended, seconds);
      lock.lock();
      continue;
    }
    cv_.wait_until(lock, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(next)));
  }
}

}  // namespace fastloop
