// Waking the loop for signals. Python's own C-level signal handler writes the
// signal number to the fd given to signal.set_wakeup_fd(); the loop polls the
// other end of that socket pair, so a signal ends a blocking poll at once.
// The loop then lets Python run its signal handlers (PyErr_CheckSignals):
// SIGINT's default handler raises KeyboardInterrupt, asyncio.Runner's cancels
// the main task, and those installed by add_signal_handler queue their
// callbacks on the loop.
#pragma once

#include <uv.h>

namespace fastloop {

class Loop;

class SignalWakeup {
 public:
  explicit SignalWakeup(Loop* loop);  // throws std::system_error
  ~SignalWakeup();
  SignalWakeup(const SignalWakeup&) = delete;
  SignalWakeup& operator=(const SignalWakeup&) = delete;

  // The fd to pass to signal.set_wakeup_fd(); -1 once closed.
  int write_fd() const noexcept { return write_fd_; }
  // Closes the poll handle (freed by the loop's close sequence) and the fds.
  void close() noexcept;

 private:
  static void on_readable(uv_poll_t* poll, int status, int events) noexcept;

  Loop* loop_;
  uv_poll_t poll_{};
  int read_fd_ = -1;
  int write_fd_ = -1;
  bool polling_ = false;
};

}  // namespace fastloop
