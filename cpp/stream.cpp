#include "stream.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <utility>

#include "errors.hpp"
#include "hooks.hpp"
#include "loop.hpp"

namespace fastloop {

namespace {

// asyncio warns after this many writes to a lost connection
// (constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES).
constexpr int kLogThresholdConnLostWrites = 5;

// Calls protocol.<name>(arg), looking the method up now, as asyncio does.
PyObject* call_method1(PyObject* protocol, PyObject* name, PyObject* arg) noexcept {
  PyObject* args[2] = {protocol, arg};
  return PyObject_VectorcallMethod(name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
}

PyObject* call_method0(PyObject* protocol, PyObject* name) noexcept {
  return PyObject_VectorcallMethod(name, &protocol, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
}

// A libuv buffer of any size (uv_buf_init takes an unsigned int length, which
// would cut a write of 4 GiB or more to its length modulo 2**32).
uv_buf_t make_buf(const char* base, size_t len) noexcept {
  uv_buf_t b;
  b.base = const_cast<char*>(base);
  b.len = len;
  return b;
}

bool is_exit_exception() noexcept {
  return PyErr_ExceptionMatches(PyExc_SystemExit) ||
         PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

// The bytes of write() or writelines() arguments: exact bytes are read in
// place, anything else through the buffer protocol (released with the views).
class WriteViews {
 public:
  WriteViews() = default;
  WriteViews(const WriteViews&) = delete;
  WriteViews& operator=(const WriteViews&) = delete;
  ~WriteViews() {
    for (Py_buffer& v : views_) {
      if (v.obj != nullptr) PyBuffer_Release(&v);
    }
  }
  // False with TypeError set when `data` is not bytes-like.
  bool add(PyObject* data) {
    Py_buffer view{};
    if (PyBytes_CheckExact(data)) {
      bufs_.push_back(
          make_buf(PyBytes_AS_STRING(data), static_cast<size_t>(PyBytes_GET_SIZE(data))));
    } else {
      if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return false;
      bufs_.push_back(make_buf(static_cast<const char*>(view.buf), static_cast<size_t>(view.len)));
    }
    views_.push_back(view);
    owners_.push_back(data);
    total_ += bufs_.back().len;
    return true;
  }
  const uv_buf_t* bufs() const noexcept { return bufs_.data(); }
  PyObject* const* owners() const noexcept { return owners_.data(); }
  size_t size() const noexcept { return bufs_.size(); }
  size_t total() const noexcept { return total_; }

 private:
  std::vector<uv_buf_t> bufs_;
  std::vector<Py_buffer> views_;   // obj == nullptr for exact bytes
  std::vector<PyObject*> owners_;  // borrowed: the caller holds them
  size_t total_ = 0;
};

}  // namespace

StreamTransport::StreamTransport(PyObject* py_loop, StreamKind kind)
    : HandleOwner(core_of(py_loop), Lifetime::kPython), kind_(kind), py_loop_(Py_NewRef(py_loop)) {
  write_req_.data = this;
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
    PyBuffer_Release(&read_view_);
    read_view_held_ = false;
  }
  Py_CLEAR(protocol_);
  Py_CLEAR(transport_);
  Py_CLEAR(server_);
  Py_CLEAR(alloc_error_);
  Py_CLEAR(empty_waiter_);
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
    *buf = make_buf(self->loop()->read_buffer(), self->loop()->read_buffer_size());
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
  if (!buffer || PyObject_GetBuffer(buffer.get(), &self->read_view_, PyBUF_WRITABLE) < 0) {
    Py_XSETREF(self->alloc_error_, take_exception());
    return;
  }
  self->read_view_held_ = true;
  if (self->read_view_.len == 0) {
    PyBuffer_Release(&self->read_view_);
    self->read_view_held_ = false;
    PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
    Py_XSETREF(self->alloc_error_, take_exception());
    return;
  }
  *buf = make_buf(static_cast<const char*>(self->read_view_.buf),
                  static_cast<size_t>(self->read_view_.len));
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
  if (read_view_held_) {
    PyBuffer_Release(&read_view_);
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
      PyBuffer_Release(&read_view_);
      read_view_held_ = false;
    }
    Ref n(PyLong_FromSsize_t(nread));
    if (n) result = Ref(call_method1(protocol_, g_str.buffer_updated, n.get()));
    if (!result) protocol_call_failed("Fatal error: protocol.buffer_updated() call failed.");
    return;
  }
  Ref data(PyBytes_FromStringAndSize(loop()->read_buffer(), nread));
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

// ---- writing --------------------------------------------------------------------

size_t StreamTransport::write_buffer_size() const noexcept {
  const auto* s = reinterpret_cast<const uv_stream_t*>(&handle_);
  // Once the connection is lost (abort(), a fatal error), a write still in
  // libuv's hands is discarded data, as asyncio's buffer is cleared then.
  if (conn_lost_ != 0) return queued_bytes_;
  return queued_bytes_ + (handle_alive() ? s->write_queue_size : 0);
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
  WriteViews views;
  if (!views.add(data)) return false;
  if (views.total() == 0) return true;  // nothing to do, as in asyncio
  return send_or_queue(views.bufs(), views.size(), views.owners());
}

bool StreamTransport::writelines(PyObject* iterable) {
  // Nothing is written unless every item is bytes-like. Python 3.11 joins the
  // items before write() checks the state (WriteTransport.writelines); 3.12
  // checks the state first (_SelectorSocketTransport.writelines).
  constexpr bool kStateFirst = PY_VERSION_HEX >= 0x030C0000;
  const char* const eof_message = kStateFirst ? "Cannot call writelines() after write_eof()"
                                              : "Cannot call write() after write_eof()";
  const char* const waiter_message = kStateFirst ? "unable to writelines; sendfile is in progress"
                                                 : "unable to write; sendfile is in progress";
  auto check_state = [&]() {
    if (eof_written_) {
      PyErr_SetString(PyExc_RuntimeError, eof_message);
      return false;
    }
    if (empty_waiter_ != nullptr) {
      PyErr_SetString(PyExc_RuntimeError, waiter_message);
      return false;
    }
    return true;
  };
  if (kStateFirst && !check_state()) return false;
  Ref items(PySequence_List(iterable));
  if (!items) return false;
  WriteViews views;
  const Py_ssize_t n = PyList_GET_SIZE(items.get());
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!views.add(PyList_GET_ITEM(items.get(), i))) {
      // 3.11's b''.join() turns any failure to get the bytes into its
      // TypeError; 3.12's memoryview(item) lets it through.
      if (kStateFirst) return false;
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError, "sequence item %zd: expected a bytes-like object, %.80s found",
                   i, Py_TYPE(PyList_GET_ITEM(items.get(), i))->tp_name);
      return false;
    }
  }
  if (!kStateFirst && !check_state()) return false;
  if (views.total() == 0) return true;
  return send_or_queue(views.bufs(), views.size(), views.owners());
}

bool StreamTransport::send_or_queue(const uv_buf_t* bufs, size_t nbufs, PyObject* const* owners) {
  if (conn_lost_ != 0) {
    if (conn_lost_ >= kLogThresholdConnLostWrites) {
      Ref r(PyObject_CallOneArg(g_hooks.log_warning, g_str.send_raised));
      if (!r) return false;
    }
    ++conn_lost_;
    return true;
  }
  if (!handle_open()) {
    if (pipe_mode_ && pipe_fd_ >= 0 && loop()->closed()) return write_after_loop_close(bufs, nbufs);
    // Closed with the loop: asyncio would have to register a writer, which
    // its closed loop refuses.
    return check_loop_open();
  }
  size_t sent = 0;
  if (!writing_ && queued_.empty()) {
    // Nothing queued: try the syscall at once.
    const int n = uv_try_write(stream(), bufs, static_cast<unsigned int>(nbufs));
    if (n >= 0) {
      sent = static_cast<size_t>(n);
    } else if (n != UV_EAGAIN) {
      fatal_uv_error(n, write_error_message());
      return true;
    }
  }
  size_t skip = sent;
  for (size_t i = 0; i < nbufs; ++i) {
    const size_t len = bufs[i].len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    const char* base = bufs[i].base + skip;
    const size_t rest = len - skip;
    skip = 0;
    PyObject* owner = nullptr;
    if (PyBytes_CheckExact(owners[i])) {
      owner = Py_NewRef(owners[i]);  // immutable: keep a reference instead of copying
    } else {
      // The caller may change a bytearray or memoryview later: copy.
      owner = PyBytes_FromStringAndSize(base, static_cast<Py_ssize_t>(rest));
      if (owner == nullptr) return false;
      base = PyBytes_AS_STRING(owner);
    }
    queued_.push_back(Chunk{owner, base, rest});
    queued_bytes_ += rest;
  }
  if (!queued_.empty() && !writing_) flush_queue();
  maybe_pause_protocol();
  return !PyErr_Occurred();
}

bool StreamTransport::write_after_loop_close(const uv_buf_t* bufs, size_t nbufs) {
  // asyncio's write pipe writes at once when nothing is buffered, loop or no
  // loop; only what is left would need the (closed) loop: RuntimeError then,
  // and for an error, whose report would schedule connection_lost on it.
  std::vector<iovec> iov(nbufs);
  size_t total = 0;
  for (size_t i = 0; i < nbufs; ++i) {
    iov[i].iov_base = bufs[i].base;
    iov[i].iov_len = bufs[i].len;
    total += bufs[i].len;
  }
  ssize_t n = -1;
  do {
    n = ::writev(pipe_fd_, iov.data(), static_cast<int>(std::min<size_t>(nbufs, IOV_MAX)));
  } while (n < 0 && errno == EINTR);
  if (n >= 0 && static_cast<size_t>(n) == total) return true;
  return check_loop_open();
}

void StreamTransport::flush_queue() {
  if (queued_.empty() || !handle_open()) return;
  if (unpollable_errno_ != 0) {
    // libuv would have to wait for the fd in epoll, which refuses it.
    release_chunks(queued_);
    queued_bytes_ = 0;
    fatal_uv_error(-unpollable_errno_, write_error_message());
    return;
  }
  std::vector<uv_buf_t> bufs;
  bufs.reserve(queued_.size());
  for (const Chunk& c : queued_) bufs.push_back(make_buf(c.base, c.len));
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
  GilFromLibuv gil(self->loop());
  self->writing_ = false;
  release_chunks(self->in_flight_);
  if (status == UV_ECANCELED) return;  // the handle is closing
  CallbackScope scope(*self);
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
    if (!schedule_connection_lost(nullptr)) PyErr_WriteUnraisable(transport_);
  } else if (eof_written_ && !shutdown_now()) {
    // As an exception from asyncio's _write_ready callback: reported.
    Ref exc(take_exception());
    Ref r(PyObject_CallFunction(g_hooks.transport_error, "OOsO", transport_, exc.get(),
                                "Exception in callback: shutdown after write_eof()", Py_False));
    if (!r) PyErr_WriteUnraisable(transport_);
  }
}

bool StreamTransport::write_eof() {
  if (pipe_mode_) {
    return close();  // a pipe has no half-close: the fd closes once the buffer drains
  }
  if (closing_ || eof_written_) return true;
  eof_written_ = true;
  if (!writing_ && queued_.empty()) return shutdown_now();
  return true;
}

bool StreamTransport::shutdown_now() {
  if (!handle_open()) return check_loop_open();
  if (::shutdown(fileno(), SHUT_WR) == 0) return true;
  // As asyncio's sock.shutdown(): e.g. ENOTCONN once the peer reset it.
  PyErr_SetFromErrno(PyExc_OSError);
  return false;
}

void StreamTransport::maybe_pause_protocol() {
  if (write_buffer_size() <= high_water_ || protocol_paused_ || protocol_ == nullptr) return;
  protocol_paused_ = true;
  call_flow_control(g_str.pause_writing, "protocol.pause_writing() failed");
}

void StreamTransport::maybe_resume_protocol() {
  if (!protocol_paused_ || write_buffer_size() > low_water_ || protocol_ == nullptr) return;
  protocol_paused_ = false;
  call_flow_control(g_str.resume_writing, "protocol.resume_writing() failed");
}

void StreamTransport::call_flow_control(PyObject* method, const char* message) {
  Ref r(call_method0(protocol_, method));
  if (r) return;
  if (is_exit_exception()) {
    loop()->defer_exception(take_exception());
    return;
  }
  // Reported, not fatal: asyncio goes on with the connection.
  Ref exc(take_exception());
  Ref rr(PyObject_CallFunction(g_hooks.transport_error, "OOsO", transport_, exc.get(), message,
                               Py_False));
  if (!rr) PyErr_WriteUnraisable(transport_);
}

namespace {

// A write-buffer limit, already checked by asyncio's own
// _FlowControlMixin._set_write_buffer_limits (any real number >= 0), as a
// byte count: the buffer size is compared with it as an integer, so a
// fraction rounds down, and what does not fit a size_t is no limit.
bool byte_limit(PyObject* value, size_t* out) {
  if (PyLong_Check(value)) {
    const size_t n = PyLong_AsSize_t(value);
    if (n == static_cast<size_t>(-1) && PyErr_Occurred()) {
      if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return false;
      PyErr_Clear();
      const int negative = PyObject_RichCompareBool(value, Py_False, Py_LT);
      if (negative < 0) return false;
      *out = negative == 1 ? 0 : SIZE_MAX;
      return true;
    }
    *out = n;
    return true;
  }
  const double d = PyFloat_AsDouble(value);
  if (d == -1.0 && PyErr_Occurred()) return false;
  if (!(d > 0)) {
    *out = 0;
  } else if (d >= 18446744073709551616.0) {
    *out = SIZE_MAX;
  } else {
    *out = static_cast<size_t>(d);
  }
  return true;
}

}  // namespace

bool StreamTransport::set_write_buffer_limits(PyObject* high, PyObject* low) {
  size_t hi = 0;
  size_t lo = 0;
  if (!byte_limit(high, &hi) || !byte_limit(low, &lo)) return false;
  high_water_ = hi;
  low_water_ = lo;
  maybe_pause_protocol();
  return !PyErr_Occurred();
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
  release_chunks(in_flight_);
  if (read_view_held_) {
    PyBuffer_Release(&read_view_);
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
