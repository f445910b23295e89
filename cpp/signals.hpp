// Waking the loop for signals. Python's own C-level signal handler writes the
// signal number to the fd given to signal.set_wakeup_fd(); the loop polls the
// other end of that socket pair, so a signal ends a blocking poll at once.
// The loop then lets Python run its signal handlers (PyErr_CheckSignals):
// SIGINT's default handler raises KeyboardInterrupt, asyncio.Runner's cancels
// the main task, and those installed by add_signal_handler queue their
// callbacks on the loop.
#pragma once

#include <uv.h>

#include "owner.hpp"

namespace fastloop {

class Loop;

class SignalWakeup final : public HandleOwner {
 public:
  // The socket pair and its poll handle, registered with the loop; nullptr
  // with OSError set (e.g. EMFILE). Frees itself once closed with the loop.
  static SignalWakeup* create(Loop* loop) noexcept;

  // The fd to pass to signal.set_wakeup_fd(); -1 once closed.
  int write_fd() const noexcept { return write_fd_; }

 private:
  explicit SignalWakeup(Loop* loop) noexcept : HandleOwner(loop, Lifetime::kSelf) {}
  ~SignalWakeup() override;
  // The fds close with the poll handle, once libuv no longer watches them.
  void handle_closed() noexcept override { close_fds(); }
  void close_fds() noexcept;
  static void on_readable(uv_poll_t* poll, int status, int events) noexcept;

  uv_poll_t poll_{};
  int read_fd_ = -1;
  int write_fd_ = -1;
};

}  // namespace fastloop
