// StreamTransport (stream.hpp): opening, reading, closing and errors. The
// write path and flow control are in stream_write.cpp.
#include "stream.hpp"

#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <new>
#include <utility>

#include "errors.hpp"
#include "hooks.hpp"
#include "loop.hpp"
#include "stream_detail.hpp"

namespace fastloop {

using stream_detail::call_method0;
using stream_detail::call_method1;
using stream_detail::is_exit_exception;
using stream_detail::make_buf;

StreamTransport::StreamTransport(PyObject* py_loop, StreamKind kind)
    : HandleOwner(core_of(py_loop), Lifetime::kPython), kind_(kind), py_loop_(Py_NewRef(py_loop)) {
  // Protocol callbacks run in a copy of the context current now, as asyncio
  // registers its transports' reader with a copy of it.
  if (!capture_context()) PyErr_Clear();
}

StreamTransport::~StreamTransport() {
  // The handle is closed by now (owner.hpp): only Python references remain.
  clear_references();
  Py_CLEAR(sock_);
  Py_CLEAR(py_loop_);
}

void StreamTransport::clear_references() noexcept {
  release_chunks(queued_);
  release_chunks(in_flight_);
  queued_bytes_ = 0;
  if (read_view_held_) {
    PyBuffer_Release(read_view_.get());
    read_view_held_ = false;
  }
  Py_CLEAR(protocol_);
  Py_CLEAR(transport_);
  Py_CLEAR(server_);
  Py_CLEAR(alloc_error_);
  Py_CLEAR(empty_waiter_);
  Py_CLEAR(direct_read_);
  // sock_ stays while the handle lives: it is detached when the handle closes.
  if (!handle_alive()) Py_CLEAR(sock_);
}

int StreamTransport::traverse(visitproc visit, void* arg) const {
  Py_VISIT(py_loop_);
  Py_VISIT(transport_);
  Py_VISIT(protocol_);
  // Not sock_: libuv owns the socket's fd, and the socket object would close
  // it from its own finalizer if the collector finalized it first (with the
  // transport, in one garbage cycle). Hidden from the collector, the socket
  // stays alive until close_stream() has detached it from the fd.
  Py_VISIT(server_);
  Py_VISIT(alloc_error_);
  Py_VISIT(empty_waiter_);
  for (const Chunk& c : queued_) Py_VISIT(c.owner);
  for (const Chunk& c : in_flight_) Py_VISIT(c.owner);
  return traverse_base(visit, arg);
}

bool StreamTransport::check_loop_open() const noexcept {
  return loop()->check_open();
}

// ---- opening --------------------------------------------------------------------

bool StreamTransport::init_stream(PyObject* py_self) {
  const bool ok = kind_ == StreamKind::kTcp
                      ? init_handle(&handle_.tcp, py_self,
                                    [](uv_loop_t* l, uv_tcp_t* t) { return uv_tcp_init(l, t); })
                      : init_handle(&handle_.pipe, py_self, [](uv_loop_t* l, uv_pipe_t* p) {
                          return uv_pipe_init(l, p, 0);
                        });
  if (ok) was_open_ = true;
  return ok;
}

bool StreamTransport::prepare_accept(PyObject* py_self) {
  return init_stream(py_self);
}

bool StreamTransport::check_pollable(int fd) {
  // Only character devices can be unpollable here (asyncio's pipe checks let
  // them through; a tty polls, /dev/null does not): ask epoll itself.
  struct stat st {};
  if (kind_ != StreamKind::kPipe || fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode)) return true;
  const int probe = epoll_create1(EPOLL_CLOEXEC);
  if (probe < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return false;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  if (epoll_ctl(probe, EPOLL_CTL_ADD, fd, &ev) < 0) unpollable_errno_ = errno;
  ::close(probe);
  return true;
}

bool StreamTransport::open(PyObject* py_self, int fd) {
  if (!check_loop_open() || !check_pollable(fd)) return false;
  // asyncio's transports take the fd's place in the selector: a reader or
  // writer added on it before goes (and libuv refuses an fd it watches).
  loop()->fd_watchers().evict(fd);
  if (!init_stream(py_self)) return false;
  const int err =
      kind_ == StreamKind::kTcp ? uv_tcp_open(&handle_.tcp, fd) : uv_pipe_open(&handle_.pipe, fd);
  if (err < 0) {
    // libuv checks before it takes the fd: it is still the caller's.
    set_uv_error(err);
    close_stream();
    return false;
  }
  if (kind_ == StreamKind::kTcp) {
    // asyncio sets TCP_NODELAY on every TCP transport (base_events._set_nodelay).
    uv_tcp_nodelay(&handle_.tcp, 1);
  }
  return true;
}

int StreamTransport::fileno() const noexcept {
  uv_os_fd_t fd = -1;
  if (!handle_open() || uv_fileno(reinterpret_cast<const uv_handle_t*>(&handle_), &fd) != 0) {
    return -1;
  }
  return fd;
}

bool StreamTransport::set_protocol(PyObject* protocol) {
  const int buffered =
      write_only_ ? 0 : PyObject_IsInstance(protocol, g_hooks.buffered_protocol_type);
  if (buffered < 0) return false;
  Py_XSETREF(protocol_, Py_NewRef(protocol));
  buffered_ = buffered == 1;
  protocol_connected_ = true;
  return true;
}

// ---- reading --------------------------------------------------------------------

bool StreamTransport::start_reading() {
  if (!is_reading() || reading_ || write_only_ || !handle_open()) return true;
  if (unpollable_errno_ != 0) {
    // What asyncio's selector raises when the reader is added.
    errno = unpollable_errno_;
    PyErr_SetFromErrno(PyExc_OSError);
    return false;
  }
  read_stop_pending_ = false;
  const int err = uv_read_start(stream(), on_alloc, on_read);
  if (err < 0) {
    fatal_uv_error(err, read_error_message());
    return true;
  }
  reading_ = true;
  return true;
}

void StreamTransport::stop_reading() noexcept {
  if (!reading_) return;
  if (in_alloc_) {
    // libuv calls the read callback right after the allocation callback and
    // crashes if reading stopped in between: stop there instead.
    read_stop_pending_ = true;
    return;
  }
  reading_ = false;
  if (handle_open()) uv_read_stop(stream());
}

void StreamTransport::pause_reading() {
  if (!is_reading()) return;
  paused_ = true;
  stop_reading();
}

bool StreamTransport::resume_reading() {
  if (closing_ || !paused_) return true;
  // asyncio re-registers the reader, which a closed loop refuses.
  if (!check_loop_open()) return false;
  paused_ = false;
  if (read_stop_pending_) {
    read_stop_pending_ = false;  // paused and resumed inside get_buffer()
    return true;
  }
  // The end of input came while paused: asyncio reads it in the next iteration.
  if (eof_pending_) return schedule_eof();
  return start_reading();
}

void StreamTransport::on_alloc(uv_handle_t* h, size_t /*suggested*/, uv_buf_t* buf) noexcept {
  auto* self = owner_of<StreamTransport>(h->data);
  *buf = make_buf(nullptr, 0);
  if (!self->buffered_) {
    if (!self->expect_large_read_ || !self->alloc_direct_read(buf)) {
      *buf = make_buf(self->loop()->read_buffer(), self->loop()->read_buffer_size());
    }
    return;
  }
  // BufferedProtocol: read straight into the protocol's buffer.
  GilFromLibuv gil(self->loop());
  self->in_alloc_ = true;
  Ref buffer;
  {
    CallbackScope scope(*self);
    if (scope.ok()) {
      Ref size(PyLong_FromLong(-1));
      if (size) buffer = Ref(call_method1(self->protocol_, g_str.get_buffer, size.get()));
    }
  }
  self->in_alloc_ = false;
  // On failure the error is kept for on_read (UV_ENOBUFS): closing, which
  // stops the read, is not allowed inside the allocation callback.
  if (buffer && !self->read_view_) {
    // Made once, for a BufferedProtocol only (an idle connection stays small).
    self->read_view_.reset(new (std::nothrow) Py_buffer{});
    if (!self->read_view_) PyErr_NoMemory();
  }
  if (!buffer || !self->read_view_ ||
      PyObject_GetBuffer(buffer.get(), self->read_view_.get(), PyBUF_WRITABLE) < 0) {
    Py_XSETREF(self->alloc_error_, take_exception());
    return;
  }
  self->read_view_held_ = true;
  if (self->read_view_->len == 0) {
    PyBuffer_Release(self->read_view_.get());
    self->read_view_held_ = false;
    PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
    Py_XSETREF(self->alloc_error_, take_exception());
    return;
  }
  *buf = make_buf(static_cast<const char*>(self->read_view_->buf),
                  static_cast<size_t>(self->read_view_->len));
}

bool StreamTransport::alloc_direct_read(uv_buf_t* buf) noexcept {
  // The last read was large: ask the kernel how much is waiting and read it
  // straight into a bytes object of that size, saving the copy out of the
  // loop's buffer (a 100 KiB message costs a 100 KiB memcpy otherwise).
  int avail = 0;
  if (ioctl(fileno(), FIONREAD, &avail) != 0 || avail < static_cast<int>(kDirectReadMin) ||
      avail > static_cast<int>(kDirectReadMax)) {
    return false;
  }
  const auto size = static_cast<size_t>(avail);
  GilFromLibuv gil(loop());
  PyObject* data = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
  if (data == nullptr) {
    PyErr_Clear();  // the loop's buffer will do
    return false;
  }
  Py_XSETREF(direct_read_, data);
  // One byte more than asked for (the bytes object's terminating NUL is
  // storage too): a read that fills the object then still reads as partial,
  // and libuv does not try another read(2) that would only say EAGAIN.
  *buf = make_buf(PyBytes_AS_STRING(data), size + 1);
  return true;
}

void StreamTransport::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* /*buf*/) noexcept {
  auto* self = owner_of<StreamTransport>(s->data);
  GilFromLibuv gil(self->loop());
  CallbackScope scope(*self);
  if (!scope.ok()) {
    self->protocol_call_failed("Fatal error: cannot enter the transport's context.");
  } else {
    self->handle_read(nread);
  }
  // What a protocol asked for from inside get_buffer(), now that libuv allows it.
  if (self->read_stop_pending_) {
    self->read_stop_pending_ = false;
    self->stop_reading();
  }
  if (self->close_pending_) {
    self->close_pending_ = false;
    self->close_stream();
  }
}

void StreamTransport::handle_read(ssize_t nread) {
  if (nread > 0) {
    read_data(nread);
    return;
  }
  Py_CLEAR(direct_read_);
  if (read_view_held_) {
    PyBuffer_Release(read_view_.get());
    read_view_held_ = false;
  }
  if (nread == UV_EOF) {
    reading_ = false;  // libuv stops reading at EOF
    if (data_poll_ == loop()->poll_count()) {
      // libuv reports the end in the same poll as the data before it (when
      // the peer has closed both ways, or the data filled the buffer);
      // asyncio's recv() sees it only in the next iteration: so do we.
      eof_pending_ = true;
      if (!schedule_eof()) protocol_call_failed(read_error_message());
    } else {
      // Read now, as asyncio's recv() would have read it: delivered even if
      // the protocol paused or closed the transport in get_buffer().
      read_eof();
    }
  } else if (nread == UV_ENOBUFS && alloc_error_ != nullptr) {
    restore_exception(std::exchange(alloc_error_, nullptr));
    protocol_call_failed("Fatal error: protocol.get_buffer() call failed.");
  } else if (nread < 0) {
    reading_ = false;  // libuv stops reading after an error
    fatal_uv_error(static_cast<int>(nread), read_error_message());
  }
}

void StreamTransport::read_data(ssize_t nread) {
  data_poll_ = loop()->poll_count();
  if (protocol_ == nullptr) return;
  Ref result;
  if (buffered_ || read_view_held_) {
    if (read_view_held_) {
      PyBuffer_Release(read_view_.get());
      read_view_held_ = false;
    }
    Ref n(PyLong_FromSsize_t(nread));
    if (n) result = Ref(call_method1(protocol_, g_str.buffer_updated, n.get()));
    if (!result) protocol_call_failed("Fatal error: protocol.buffer_updated() call failed.");
    return;
  }
  // Only a read in the direct range predicts another: after a bigger one (a
  // bulk transfer filling the loop's buffer) FIONREAD would only say "too much".
  expect_large_read_ =
      static_cast<size_t>(nread) >= kDirectReadMin && static_cast<size_t>(nread) <= kDirectReadMax;
  Ref data;
  if (direct_read_ != nullptr) {
    // Read into the bytes object itself (alloc_direct_read): fit its size
    // to what came (the object is ours alone until data_received).
    PyObject* obj = std::exchange(direct_read_, nullptr);
    if (PyBytes_GET_SIZE(obj) == nread || _PyBytes_Resize(&obj, nread) == 0) data = Ref(obj);
  } else {
    data = Ref(PyBytes_FromStringAndSize(loop()->read_buffer(), nread));
  }
  if (data) result = Ref(call_method1(protocol_, g_str.data_received, data.get()));
  if (!result) protocol_call_failed("Fatal error: protocol.data_received() call failed.");
}

bool StreamTransport::schedule_eof() {
  PyObject* py_self = keep_alive();
  if (py_self == nullptr) return true;  // the handle is gone: nothing to deliver
  Ref method(PyObject_GetAttrString(py_self, "_deliver_eof"));
  return method && loop()->call_soon(py_loop_, method.get(), nullptr, 0);
}

void StreamTransport::deliver_eof() {
  // Paused meanwhile: asyncio would not read the end until resume_reading().
  if (!eof_pending_ || paused_ || closing_ || protocol_ == nullptr) return;
  eof_pending_ = false;
  CallbackScope scope(*this);
  if (!scope.ok()) {
    protocol_call_failed("Fatal error: cannot enter the transport's context.");
    return;
  }
  read_eof();
}

void StreamTransport::read_eof() {
  if (protocol_ == nullptr) return;
  if (pipe_mode_) {
    // As unix_events' read pipe: eof_received in a callback of its own, and
    // the transport closes whatever it returns.
    Ref method(PyObject_GetAttr(protocol_, g_str.eof_received));
    if (!method || !loop()->call_soon(py_loop_, method.get(), nullptr, 0)) {
      protocol_call_failed("Fatal error: protocol.eof_received() call failed.");
      return;
    }
    if (!close()) PyErr_WriteUnraisable(transport_);
    return;
  }
  Ref keep_open(call_method0(protocol_, g_str.eof_received));
  if (!keep_open) {
    protocol_call_failed("Fatal error: protocol.eof_received() call failed.");
    return;
  }
  const int truth = PyObject_IsTrue(keep_open.get());
  if (truth < 0) {
    protocol_call_failed("Fatal error: protocol.eof_received() call failed.");
  } else if (truth == 0 && !close()) {
    PyErr_WriteUnraisable(transport_);
  }
  // Kept open: the protocol may still write; reading has stopped.
}

// ---- closing --------------------------------------------------------------------

bool StreamTransport::close() {
  if (closing_) return true;
  closing_ = true;
  stop_reading();
  if (!writing_ && queued_.empty()) {
    ++conn_lost_;
    return schedule_connection_lost(nullptr);
  }
  return true;
}

bool StreamTransport::force_close(PyObject* exc) {
  if (conn_lost_ != 0) return true;
  release_chunks(queued_);
  queued_bytes_ = 0;
  if (!closing_) {
    closing_ = true;
    stop_reading();
  }
  ++conn_lost_;
  return schedule_connection_lost(exc);
}

bool StreamTransport::schedule_connection_lost(PyObject* exc) {
  if (lost_scheduled_) return true;
  // asyncio's call_soon: refused once the loop is closed.
  if (!check_loop_open() || transport_ == nullptr) return false;
  Ref method(PyObject_GetAttr(transport_, g_str.call_connection_lost));
  PyObject* arg = exc != nullptr ? exc : Py_None;
  if (!method || !loop()->call_soon(py_loop_, method.get(), &arg, 1)) return false;
  lost_scheduled_ = true;
  return true;
}

void StreamTransport::close_with_loop() noexcept {
  // asyncio's loop.close() leaves transports alone; libuv needs the handle
  // closed. The queued data could never be sent now. The transport itself
  // stays as it was: is_closing() is unchanged, and close() or write() say
  // the loop is closed, as asyncio's do.
  release_chunks(queued_);
  queued_bytes_ = 0;
  reading_ = false;
  close_stream();
}

bool StreamTransport::call_connection_lost(PyObject* exc) {
  PyObject* error = nullptr;
  lost_called_ = true;
  if (conn_lost_ == 0) conn_lost_ = 1;
  if (protocol_connected_ && protocol_ != nullptr) {
    Ref r(call_method1(protocol_, g_str.connection_lost, exc != nullptr ? exc : Py_None));
    if (!r) error = take_exception();
  }
  // What asyncio does in its `finally:`, whatever connection_lost did.
  close_stream();
  protocol_connected_ = false;
  Py_CLEAR(protocol_);
  if (server_ != nullptr) {
    Ref server(std::exchange(server_, nullptr));
    Ref r(PyObject_CallFunctionObjArgs(g_hooks.server_detach, server.get(), transport_, nullptr));
    if (!r && error == nullptr) error = take_exception();
    PyErr_Clear();
  }
  if (empty_waiter_ != nullptr) {
    Ref exc(PyObject_CallFunction(PyExc_ConnectionError, "s", "Connection is closed by peer"));
    if (exc) settle_empty_waiter(exc.get());
    PyErr_Clear();
  }
  if (error != nullptr) {
    restore_exception(error);
    return false;
  }
  return true;
}

void StreamTransport::close_stream() noexcept {
  if (!handle_open()) return;
  if (in_alloc_) {
    close_pending_ = true;  // not inside libuv's allocation callback: see on_read
    return;
  }
  reading_ = false;
  if (sock_ != nullptr) {
    // libuv closes the fd: the Python socket object must not close it again.
    Ref r(call_method0(sock_, g_str.detach));
    if (!r) PyErr_WriteUnraisable(sock_);
  }
  close_handle();
}

void StreamTransport::handle_closed() noexcept {
  writing_ = false;
  Py_CLEAR(direct_read_);
  release_chunks(in_flight_);
  if (read_view_held_) {
    PyBuffer_Release(read_view_.get());
    read_view_held_ = false;
  }
}

void StreamTransport::release_chunks(std::vector<Chunk>& chunks) {
  std::vector<Chunk> old;
  old.swap(chunks);
  for (const Chunk& c : old) Py_DECREF(c.owner);
}

// ---- errors ---------------------------------------------------------------------

void StreamTransport::fatal_error(PyObject* exc, const char* message) {
  if (transport_ != nullptr) {
    Ref r(
        PyObject_CallFunction(g_hooks.transport_error, "OOsO", transport_, exc, message, Py_True));
    if (!r) PyErr_WriteUnraisable(transport_);
  }
  if (!force_close(exc)) PyErr_WriteUnraisable(transport_);
}

void StreamTransport::fatal_uv_error(int err, const char* message) {
  set_uv_error(err);
  Ref exc(take_exception());
  fatal_error(exc.get(), message);
  settle_empty_waiter(exc.get());
}

PyObject* StreamTransport::make_empty_waiter() {
  if (empty_waiter_ != nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "Empty waiter is already set");
    return nullptr;
  }
  empty_waiter_ = PyObject_CallMethod(py_loop_, "create_future", nullptr);
  if (empty_waiter_ == nullptr) return nullptr;
  if (write_buffer_size() == 0 && !writing_) {
    Ref r(PyObject_CallMethod(empty_waiter_, "set_result", "O", Py_None));
    if (!r) return nullptr;
  }
  return Py_NewRef(empty_waiter_);
}

void StreamTransport::settle_empty_waiter(PyObject* exc) {
  if (empty_waiter_ == nullptr) return;
  Ref done(PyObject_CallMethod(empty_waiter_, "done", nullptr));
  if (done && done.get() == Py_False) {
    Ref r(exc != nullptr ? PyObject_CallMethod(empty_waiter_, "set_exception", "O", exc)
                         : PyObject_CallMethod(empty_waiter_, "set_result", "O", Py_None));
  }
  PyErr_Clear();
}

void StreamTransport::protocol_call_failed(const char* message) {
  if (is_exit_exception()) {
    loop()->defer_exception(take_exception());
    return;
  }
  Ref exc(take_exception());
  if (pipe_mode_) {
    // asyncio's pipe transports call the protocol from a plain callback: its
    // exception is reported and the pipe stays open.
    Ref r(PyObject_CallFunction(g_hooks.transport_error, "OOsO", transport_, exc.get(),
                                "Exception in callback of a pipe transport", Py_False));
    if (!r) PyErr_WriteUnraisable(transport_);
    return;
  }
  fatal_error(exc.get(), message);
}

}  // namespace fastloop
