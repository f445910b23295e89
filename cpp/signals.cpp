#include "signals.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <new>

#include "errors.hpp"
#include "loop.hpp"
#include "pyutil.hpp"

namespace fastloop {

SignalWakeup* SignalWakeup::create(Loop* loop) noexcept {
  auto* self = new (std::nothrow) SignalWakeup(loop);
  if (self == nullptr) {
    PyErr_NoMemory();
    return nullptr;
  }
  int fds[2];
  // Both ends non-blocking: signal.set_wakeup_fd() requires it of the write
  // end, and the reader drains until EAGAIN.
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    delete self;
    return nullptr;
  }
  self->read_fd_ = fds[0];
  self->write_fd_ = fds[1];
  if (!self->init_handle(&self->poll_, nullptr,
                         [&](uv_loop_t* l, uv_poll_t* p) { return uv_poll_init(l, p, fds[0]); })) {
    delete self;  // never registered: ours to free (the destructor closes the fds)
    return nullptr;
  }
  const int err = uv_poll_start(&self->poll_, UV_READABLE, on_readable);
  if (err < 0) {
    set_uv_error(err);
    self->close_handle();  // the close callback closes the fds and frees it
    return nullptr;
  }
  // The wake-up poll alone must not keep uv_run from returning.
  uv_unref(reinterpret_cast<uv_handle_t*>(&self->poll_));
  return self;
}

SignalWakeup::~SignalWakeup() {
  close_fds();
}

void SignalWakeup::close_fds() noexcept {
  if (read_fd_ >= 0) ::close(read_fd_);
  if (write_fd_ >= 0) ::close(write_fd_);
  read_fd_ = write_fd_ = -1;
}

void SignalWakeup::on_readable(uv_poll_t* poll, int /*status*/, int /*events*/) noexcept {
  auto* self = owner_of<SignalWakeup>(poll->data);
  // The bytes only woke the loop; which signals arrived is Python's to know.
  unsigned char buf[256];
  while (::read(self->read_fd_, buf, sizeof buf) > 0) {
  }
  GilFromLibuv gil(self->loop());
  // Run Python's signal handlers now, in the loop's thread: SIGINT's default
  // one raises KeyboardInterrupt, which leaves run_forever; those installed
  // by add_signal_handler queue their callbacks.
  if (PyErr_CheckSignals() < 0) self->loop()->defer_exception(take_exception());
}

}  // namespace fastloop
