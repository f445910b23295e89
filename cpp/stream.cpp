#include "stream.hpp"

#include <sys/socket.h>

#include <cstring>
#include <utility>

#include "errors.hpp"
#include "hooks.hpp"
#include "loop.hpp"

namespace fastloop {

namespace {

// asyncio warns after this many writes to a lost connection
// (constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES).
constexpr int kLogThresholdConnLostWrites = 5;

// Calls a bound method with one argument; nullptr with an exception set.
PyObject* call1(PyObject* method, PyObject* arg) noexcept {
  return PyObject_Vectorcall(method, &arg, 1, nullptr);
}

// The bytes of a write() argument: exact bytes are read in place, anything
// else through the buffer protocol (released with the view).
class WriteView {
 public:
  bool acquire(PyObject* data) noexcept {
    if (PyBytes_CheckExact(data)) {
      base_ = PyBytes_AS_STRING(data);
      len_ = static_cast<size_t>(PyBytes_GET_SIZE(data));
      return true;
    }
    if (PyObject_GetBuffer(data, &view_, PyBUF_SIMPLE) < 0) return false;
    exported_ = true;
    base_ = static_cast<const char*>(view_.buf);
    len_ = static_cast<size_t>(view_.len);
    return true;
  }
  ~WriteView() {
    if (exported_) PyBuffer_Release(&view_);
  }
  const char* base() const noexcept { return base_; }
  size_t len() const noexcept { return len_; }

 private:
  Py_buffer view_{};
  const char* base_ = nullptr;
  size_t len_ = 0;
  bool exported_ = false;
};

bool is_exit_exception() noexcept {
  return PyErr_ExceptionMatches(PyExc_SystemExit) ||
         PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

}  // namespace

StreamTransport::StreamTransport(PyObject* py_loop, StreamKind kind)
    : kind_(kind), loop_(core_of(py_loop)), py_loop_(Py_NewRef(py_loop)) {
  if (kind_ == StreamKind::kTcp) {
    uv_tcp_init(loop_->uv(), &handle_.tcp);
  } else {
    uv_pipe_init(loop_->uv(), &handle_.pipe, 0);
  }
  handle_.tcp.data = this;
  write_req_.data = this;
  handle_open_ = true;
  loop_->add_resource(this);
}

StreamTransport::~StreamTransport() {
  // The handle is closed by now: self_ref_ kept this object alive until
  // on_close. Only the Python references remain to release.
  release_chunks(queued_);
  release_chunks(in_flight_);
  if (read_view_held_) PyBuffer_Release(&read_view_);
  Py_CLEAR(protocol_);
  Py_CLEAR(data_received_);
  Py_CLEAR(get_buffer_);
  Py_CLEAR(buffer_updated_);
  Py_CLEAR(eof_received_);
  Py_CLEAR(sock_);
  Py_CLEAR(server_);
  Py_CLEAR(alloc_error_);
  Py_CLEAR(empty_waiter_);
  Py_CLEAR(py_loop_);
}

void StreamTransport::adopt(PyObject* owner) {
  // Ownership: the Python transport now lives at least until on_close.
  self_ref_ = Py_NewRef(owner);
}

int StreamTransport::open(int fd) {
  int err =
      kind_ == StreamKind::kTcp ? uv_tcp_open(&handle_.tcp, fd) : uv_pipe_open(&handle_.pipe, fd);
  if (err == 0 && kind_ == StreamKind::kTcp) {
    // asyncio sets TCP_NODELAY on every TCP transport (base_events._set_nodelay).
    uv_tcp_nodelay(&handle_.tcp, 1);
  }
  return err;
}

int StreamTransport::fileno() const noexcept {
  uv_os_fd_t fd = -1;
  if (!handle_open_ || uv_fileno(reinterpret_cast<const uv_handle_t*>(&handle_), &fd) != 0) {
    return -1;
  }
  return fd;
}

bool StreamTransport::set_protocol(PyObject* protocol) {
  Ref data_received, get_buffer, buffer_updated, eof_received;
  if (write_only_) {
    Py_XSETREF(protocol_, Py_NewRef(protocol));
    protocol_connected_ = true;
    return true;
  }
  int buffered = PyObject_IsInstance(protocol, g_hooks.buffered_protocol_type);
  if (buffered < 0) return false;
  if (buffered == 1) {
    get_buffer = Ref(PyObject_GetAttrString(protocol, "get_buffer"));
    buffer_updated = Ref(PyObject_GetAttrString(protocol, "buffer_updated"));
    if (!get_buffer || !buffer_updated) return false;
  } else {
    data_received = Ref(PyObject_GetAttrString(protocol, "data_received"));
    if (!data_received) return false;
  }
  eof_received = Ref(PyObject_GetAttrString(protocol, "eof_received"));
  if (!eof_received) return false;
  Py_XSETREF(protocol_, Py_NewRef(protocol));
  Py_XSETREF(data_received_, data_received.release());
  Py_XSETREF(get_buffer_, get_buffer.release());
  Py_XSETREF(buffer_updated_, buffer_updated.release());
  Py_XSETREF(eof_received_, eof_received.release());
  protocol_connected_ = true;
  return true;
}

// ---- reading ------------------------------------------------------------------

void StreamTransport::start_reading() {
  if (!is_reading() || reading_ || !handle_open_) return;
  const int err = uv_read_start(stream(), on_alloc, on_read);
  if (err < 0) {
    fatal_uv_error(err, read_error_message());
    return;
  }
  reading_ = true;
}

void StreamTransport::pause_reading() {
  if (!is_reading()) return;
  paused_ = true;
  if (reading_) {
    uv_read_stop(stream());
    reading_ = false;
  }
}

void StreamTransport::resume_reading() {
  if (closing_ || !paused_) return;
  paused_ = false;
  start_reading();
}

void StreamTransport::on_alloc(uv_handle_t* h, size_t /*suggested*/, uv_buf_t* buf) noexcept {
  auto* self = static_cast<StreamTransport*>(h->data);
  *buf = uv_buf_init(nullptr, 0);
  if (self->get_buffer_ == nullptr) {
    *buf = uv_buf_init(self->loop_->read_buffer(), self->loop_->read_buffer_size());
    return;
  }
  // BufferedProtocol: read straight into the protocol's buffer.
  GilFromLibuv gil(self->loop_);
  Ref size(PyLong_FromLong(-1));
  Ref buffer(size ? call1(self->get_buffer_, size.get()) : nullptr);
  // On failure, the error is kept for on_read (UV_ENOBUFS): libuv does not
  // allow uv_read_stop, which closing does, inside the allocation callback.
  if (!buffer || PyObject_GetBuffer(buffer.get(), &self->read_view_, PyBUF_WRITABLE) < 0) {
    self->alloc_error_ = take_exception();
    return;
  }
  self->read_view_held_ = true;
  if (self->read_view_.len == 0) {
    PyBuffer_Release(&self->read_view_);
    self->read_view_held_ = false;
    PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
    self->alloc_error_ = take_exception();
    return;
  }
  *buf = uv_buf_init(static_cast<char*>(self->read_view_.buf),
                     static_cast<unsigned int>(self->read_view_.len));
}

void StreamTransport::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* /*buf*/) noexcept {
  auto* self = static_cast<StreamTransport*>(s->data);
  GilFromLibuv gil(self->loop_);
  if (nread > 0) {
    self->read_data(nread);
    return;
  }
  if (self->read_view_held_) {
    PyBuffer_Release(&self->read_view_);
    self->read_view_held_ = false;
  }
  if (nread == UV_EOF) {
    self->reading_ = false;  // libuv stops reading at EOF
    self->read_eof();
  } else if (nread == UV_ENOBUFS && self->alloc_error_ != nullptr) {
    restore_exception(std::exchange(self->alloc_error_, nullptr));
    self->protocol_call_failed("Fatal error: protocol.get_buffer() call failed.");
  } else if (nread < 0) {
    self->fatal_uv_error(static_cast<int>(nread), self->read_error_message());
  }
}

void StreamTransport::read_data(ssize_t nread) {
  Ref result;
  if (get_buffer_ != nullptr) {
    if (read_view_held_) {
      PyBuffer_Release(&read_view_);
      read_view_held_ = false;
    }
    Ref n(PyLong_FromSsize_t(nread));
    if (n) result = Ref(call1(buffer_updated_, n.get()));
    if (!result) protocol_call_failed("Fatal error: protocol.buffer_updated() call failed.");
    return;
  }
  Ref data(PyBytes_FromStringAndSize(loop_->read_buffer(), nread));
  if (data) result = Ref(call1(data_received_, data.get()));
  if (!result) protocol_call_failed("Fatal error: protocol.data_received() call failed.");
}

void StreamTransport::read_eof() {
  if (pipe_mode_) {
    // As unix_events' read pipe: eof_received in a callback of its own, and
    // the transport closes whatever it returns.
    if (!loop_->call_soon(py_loop_, eof_received_, nullptr, 0)) PyErr_WriteUnraisable(self_ref_);
    close();
    return;
  }
  Ref keep_open(PyObject_CallNoArgs(eof_received_));
  if (!keep_open) {
    protocol_call_failed("Fatal error: protocol.eof_received() call failed.");
    return;
  }
  const int truth = PyObject_IsTrue(keep_open.get());
  if (truth < 0) {
    protocol_call_failed("Fatal error: protocol.eof_received() call failed.");
  } else if (truth == 0) {
    close();
  }
  // Kept open: the protocol may still write; reading has stopped.
}

// ---- writing ------------------------------------------------------------------

size_t StreamTransport::write_buffer_size() const noexcept {
  const auto* s = reinterpret_cast<const uv_stream_t*>(&handle_);
  // Once the connection is lost (abort(), a fatal error), a write still in
  // libuv's hands is discarded data, as asyncio's buffer is cleared then.
  if (conn_lost_ != 0) return queued_bytes_;
  return queued_bytes_ + (handle_open_ ? s->write_queue_size : 0);
}

bool StreamTransport::write(PyObject* data) {
  if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
    PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%.100s'",
                 Py_TYPE(data)->tp_name);
    return false;
  }
  if (eof_written_) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
    return false;
  }
  if (empty_waiter_ != nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "unable to write; sendfile is in progress");
    return false;
  }
  WriteView view;
  if (!view.acquire(data)) return false;
  const char* base = view.base();
  const size_t len = view.len();
  bool ok = true;
  if (len == 0) {
    // Nothing to do, as in asyncio.
  } else if (conn_lost_ != 0) {
    if (conn_lost_ >= kLogThresholdConnLostWrites) {
      Ref r(PyObject_CallOneArg(g_hooks.log_warning, g_str.send_raised));
      if (!r) ok = false;
    }
    ++conn_lost_;
  } else {
    size_t sent = 0;
    if (!writing_ && queued_.empty()) {
      // Nothing queued: try the syscall at once.
      uv_buf_t b = uv_buf_init(const_cast<char*>(base), static_cast<unsigned int>(len));
      const int n = uv_try_write(stream(), &b, 1);
      if (n >= 0) {
        sent = static_cast<size_t>(n);
      } else if (n != UV_EAGAIN) {
        fatal_uv_error(n, write_error_message());
        return true;
      }
    }
    if (sent < len) {
      ok = queue_bytes(data, base, len, sent);
      if (ok && !writing_) flush_queue();
      if (ok) maybe_pause_protocol();
    }
  }
  return ok;
}

bool StreamTransport::queue_bytes(PyObject* data, const char* base, size_t len, size_t skip) {
  PyObject* owner = nullptr;
  if (PyBytes_CheckExact(data)) {
    // Immutable: keep a reference instead of copying.
    owner = Py_NewRef(data);
    base += skip;
  } else {
    // The caller may change a bytearray or memoryview later: copy.
    owner = PyBytes_FromStringAndSize(base + skip, static_cast<Py_ssize_t>(len - skip));
    if (owner == nullptr) return false;
    base = PyBytes_AS_STRING(owner);
  }
  queued_.push_back(Chunk{owner, base, len - skip});
  queued_bytes_ += len - skip;
  return true;
}

bool StreamTransport::writelines(PyObject* iterable) {
  Ref it(PyObject_GetIter(iterable));
  if (!it) return false;
  while (Ref item{PyIter_Next(it.get())}) {
    if (!write(item.get())) return false;
  }
  return !PyErr_Occurred();
}

void StreamTransport::flush_queue() {
  if (queued_.empty() || !handle_open_) return;
  std::vector<uv_buf_t> bufs;
  bufs.reserve(queued_.size());
  for (const Chunk& c : queued_) {
    bufs.push_back(uv_buf_init(const_cast<char*>(c.base), static_cast<unsigned int>(c.len)));
  }
  in_flight_.swap(queued_);
  queued_bytes_ = 0;
  const int err =
      uv_write(&write_req_, stream(), bufs.data(), static_cast<unsigned>(bufs.size()), on_write);
  if (err < 0) {
    release_chunks(in_flight_);
    fatal_uv_error(err, write_error_message());
    return;
  }
  writing_ = true;
}

void StreamTransport::on_write(uv_write_t* req, int status) noexcept {
  auto* self = static_cast<StreamTransport*>(req->data);
  GilFromLibuv gil(self->loop_);
  self->writing_ = false;
  self->release_chunks(self->in_flight_);
  if (status == UV_ECANCELED) return;  // the handle is closing
  if (status < 0) {
    self->fatal_uv_error(status, self->write_error_message());
    return;
  }
  if (!self->queued_.empty()) {
    self->flush_queue();
    self->maybe_resume_protocol();
    return;
  }
  self->after_write();
}

void StreamTransport::after_write() {
  maybe_resume_protocol();
  if (write_buffer_size() != 0 || writing_) return;
  settle_empty_waiter(nullptr);
  if (closing_) {
    schedule_connection_lost(nullptr);
  } else if (eof_written_) {
    shutdown_now();
  }
}

bool StreamTransport::write_eof() {
  if (pipe_mode_) {
    close();  // a pipe has no half-close: the fd closes once the buffer drains
    return true;
  }
  if (closing_ || eof_written_) return true;
  eof_written_ = true;
  if (!writing_ && queued_.empty()) shutdown_now();
  return true;
}

void StreamTransport::shutdown_now() {
  const int fd = fileno();
  if (fd >= 0) ::shutdown(fd, SHUT_WR);
}

void StreamTransport::maybe_pause_protocol() {
  if (write_buffer_size() <= high_water_ || protocol_paused_ || protocol_ == nullptr) return;
  protocol_paused_ = true;
  call_flow_control("pause_writing", "protocol.pause_writing() failed");
}

void StreamTransport::maybe_resume_protocol() {
  if (!protocol_paused_ || write_buffer_size() > low_water_ || protocol_ == nullptr) return;
  protocol_paused_ = false;
  call_flow_control("resume_writing", "protocol.resume_writing() failed");
}

void StreamTransport::call_flow_control(const char* method, const char* message) {
  Ref r(PyObject_CallMethod(protocol_, method, nullptr));
  if (r) return;
  if (is_exit_exception()) {
    loop_->defer_exception(take_exception());
    return;
  }
  // Reported, not fatal: asyncio goes on with the connection.
  Ref exc(take_exception());
  Ref rr(PyObject_CallFunction(g_hooks.transport_error, "OOsO", self_ref_, exc.get(), message,
                               Py_False));
  if (!rr) PyErr_WriteUnraisable(self_ref_);
}

bool StreamTransport::set_write_buffer_limits(PyObject* high, PyObject* low) {
  Py_ssize_t hi = 0;
  Py_ssize_t lo = 0;
  if (high == Py_None) {
    if (low == Py_None) {
      hi = 64 * 1024;
    } else {
      lo = PyLong_AsSsize_t(low);
      if (lo == -1 && PyErr_Occurred()) return false;
      hi = 4 * lo;
    }
  } else {
    hi = PyLong_AsSsize_t(high);
    if (hi == -1 && PyErr_Occurred()) return false;
  }
  if (low == Py_None) {
    lo = hi / 4;
  } else {
    lo = PyLong_AsSsize_t(low);
    if (lo == -1 && PyErr_Occurred()) return false;
  }
  if (!(hi >= lo && lo >= 0)) {
    PyErr_Format(PyExc_ValueError, "high (%zd) must be >= low (%zd) must be >= 0", hi, lo);
    return false;
  }
  high_water_ = static_cast<size_t>(hi);
  low_water_ = static_cast<size_t>(lo);
  maybe_pause_protocol();
  return !PyErr_Occurred();
}

// ---- closing ------------------------------------------------------------------

void StreamTransport::close() {
  if (closing_) return;
  closing_ = true;
  if (reading_) {
    uv_read_stop(stream());
    reading_ = false;
  }
  if (!writing_ && queued_.empty()) {
    ++conn_lost_;
    schedule_connection_lost(nullptr);
  }
}

void StreamTransport::force_close(PyObject* exc) {
  if (conn_lost_ != 0) return;
  release_chunks(queued_);
  queued_bytes_ = 0;
  if (!closing_) {
    closing_ = true;
    if (reading_) {
      uv_read_stop(stream());
      reading_ = false;
    }
  }
  ++conn_lost_;
  schedule_connection_lost(exc);
}

void StreamTransport::schedule_connection_lost(PyObject* exc) {
  if (lost_scheduled_) return;
  lost_scheduled_ = true;
  Ref method(PyObject_GetAttrString(self_ref_, "_call_connection_lost"));
  PyObject* arg = exc != nullptr ? exc : Py_None;
  if (!method || !loop_->call_soon(py_loop_, method.get(), &arg, 1)) {
    PyErr_WriteUnraisable(self_ref_);
  }
}

void StreamTransport::close_with_loop() noexcept {
  release_chunks(queued_);
  queued_bytes_ = 0;
  closing_ = true;
  close_handle();
}

bool StreamTransport::call_connection_lost(PyObject* exc) {
  PyObject* error = nullptr;
  if (protocol_connected_ && protocol_ != nullptr) {
    Ref r(PyObject_CallMethod(protocol_, "connection_lost", "O", exc != nullptr ? exc : Py_None));
    if (!r) error = take_exception();
  }
  // What asyncio does in its `finally:`, whatever connection_lost did.
  close_handle();
  protocol_connected_ = false;
  Py_CLEAR(protocol_);
  Py_CLEAR(data_received_);
  Py_CLEAR(get_buffer_);
  Py_CLEAR(buffer_updated_);
  Py_CLEAR(eof_received_);
  if (server_ != nullptr) {
    Ref server(std::exchange(server_, nullptr));
    Ref r(PyObject_CallFunctionObjArgs(g_hooks.server_detach, server.get(), self_ref_, nullptr));
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

void StreamTransport::close_handle() {
  if (!handle_open_) return;
  handle_open_ = false;
  loop_->remove_resource(this);
  if (sock_ != nullptr) {
    // libuv closes the fd: the Python socket object must not close it again.
    Ref r(PyObject_CallMethod(sock_, "detach", nullptr));
    if (!r) PyErr_Clear();
  }
  // Ownership passes to libuv until on_close releases the Python object.
  uv_close(reinterpret_cast<uv_handle_t*>(&handle_), on_close);
}

void StreamTransport::on_close(uv_handle_t* h) noexcept {
  auto* self = static_cast<StreamTransport*>(h->data);
  GilFromLibuv gil(self->loop_);
  self->handle_closed_ = true;
  // Last: this may destroy the Python object and this transport with it.
  PyObject* me = std::exchange(self->self_ref_, nullptr);
  Py_XDECREF(me);
}

void StreamTransport::release_chunks(std::vector<Chunk>& chunks) {
  std::vector<Chunk> old;
  old.swap(chunks);
  for (const Chunk& c : old) Py_DECREF(c.owner);
}

// ---- errors -------------------------------------------------------------------

void StreamTransport::fatal_error(PyObject* exc, const char* message) {
  Ref r(PyObject_CallFunction(g_hooks.transport_error, "OOsO", self_ref_, exc, message, Py_True));
  if (!r) PyErr_WriteUnraisable(self_ref_);
  force_close(exc);
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
    loop_->defer_exception(take_exception());
    return;
  }
  Ref exc(take_exception());
  fatal_error(exc.get(), message);
}

}  // namespace fastloop
