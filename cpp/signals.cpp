#include "signals.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "loop.hpp"
#include "pyutil.hpp"

namespace fastloop {

SignalWakeup::SignalWakeup(Loop* loop) : loop_(loop) {
  int fds[2];
  // Both ends non-blocking: signal.set_wakeup_fd() requires it of the write
  // end, and the reader drains until EAGAIN.
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0) {
    throw std::system_error(errno, std::generic_category(), "socketpair");
  }
  read_fd_ = fds[0];
  write_fd_ = fds[1];
  int err = uv_poll_init(loop->uv(), &poll_, read_fd_);
  if (err == 0) err = uv_poll_start(&poll_, UV_READABLE, on_readable);
  if (err < 0) {
    ::close(read_fd_);
    ::close(write_fd_);
    throw std::system_error(-err, std::generic_category(), "uv_poll_start");
  }
  poll_.data = this;
  polling_ = true;
  // The wake-up poll alone must not keep uv_run from returning.
  uv_unref(reinterpret_cast<uv_handle_t*>(&poll_));
}

SignalWakeup::~SignalWakeup() {
  close();
}

void SignalWakeup::close() noexcept {
  if (polling_) {
    uv_close(reinterpret_cast<uv_handle_t*>(&poll_), nullptr);
    polling_ = false;
  }
  if (read_fd_ >= 0) ::close(read_fd_);
  if (write_fd_ >= 0) ::close(write_fd_);
  read_fd_ = write_fd_ = -1;
}

void SignalWakeup::on_readable(uv_poll_t* poll, int /*status*/, int /*events*/) noexcept {
  auto* self = static_cast<SignalWakeup*>(poll->data);
  // The bytes only woke the loop; which signals arrived is Python's to know.
  unsigned char buf[256];
  while (::read(self->read_fd_, buf, sizeof buf) > 0) {
  }
  GilFromLibuv gil(self->loop_);
  // Run Python's signal handlers now, in the loop's thread: SIGINT's default
  // one raises KeyboardInterrupt, which leaves run_forever; those installed
  // by add_signal_handler queue their callbacks.
  if (PyErr_CheckSignals() < 0) self->loop_->defer_exception(take_exception());
}

}  // namespace fastloop
