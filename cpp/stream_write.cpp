// StreamTransport's write path (stream.hpp): write() and writelines() try the
// syscall at once when nothing is queued; what is left is queued and all of
// it goes out in one uv_write (writev). Flow control (pause_writing /
// resume_writing around the write-buffer limits) and write_eof() live here
// too.
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <new>
#include <vector>

#include "errors.hpp"
#include "hooks.hpp"
#include "loop.hpp"
#include "stream.hpp"
#include "stream_detail.hpp"

namespace fastloop {

using stream_detail::is_exit_exception;
using stream_detail::make_buf;

namespace {

// asyncio warns after this many writes to a lost connection
// (constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES).
constexpr int kLogThresholdConnLostWrites = 5;

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
  // Nothing is written unless every item is bytes-like. asyncio's
  // WriteTransport.writelines joins the items before write() checks the state
  // (pipes on every version, sockets on 3.11); since 3.12 a socket transport
  // checks its state first and takes the items as they are
  // (_SelectorSocketTransport.writelines).
  const bool state_first = PY_VERSION_HEX >= 0x030C0000 && !pipe_mode_;
  const char* const eof_message = state_first ? "Cannot call writelines() after write_eof()"
                                              : "Cannot call write() after write_eof()";
  const char* const waiter_message = state_first ? "unable to writelines; sendfile is in progress"
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
  if (state_first) {
    if (!check_state()) return false;
    // It returns at once for anything false (None, an empty list...).
    const int truth = PyObject_IsTrue(iterable);
    if (truth <= 0) return truth == 0;
  }
  Ref items(PySequence_List(iterable));
  if (!items) return false;
  WriteViews views;
  const Py_ssize_t n = PyList_GET_SIZE(items.get());
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!views.add(PyList_GET_ITEM(items.get(), i))) {
      // b''.join() turns any failure to get the bytes into its TypeError;
      // memoryview(item) lets it through.
      if (state_first) return false;
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError, "sequence item %zd: expected a bytes-like object, %.80s found",
                   i, Py_TYPE(PyList_GET_ITEM(items.get(), i))->tp_name);
      return false;
    }
  }
  if (!state_first && !check_state()) return false;
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
  if (!write_req_) {
    // Made at the first write the kernel could not take at once, then kept:
    // most connections never need one (an idle connection stays small).
    write_req_.reset(new (std::nothrow) uv_write_t{});
    if (!write_req_) {
      PyErr_NoMemory();
      return;
    }
    write_req_->data = this;
  }
  std::vector<uv_buf_t> bufs;
  bufs.reserve(queued_.size());
  for (const Chunk& c : queued_) bufs.push_back(make_buf(c.base, c.len));
  in_flight_.swap(queued_);
  queued_bytes_ = 0;
  const int err = uv_write(write_req_.get(), stream(), bufs.data(),
                           static_cast<unsigned>(bufs.size()), on_write);
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
  flow_.maybe_pause(write_buffer_size(), protocol_, transport_, loop());
}

void StreamTransport::maybe_resume_protocol() {
  flow_.maybe_resume(write_buffer_size(), protocol_, transport_, loop());
}

bool StreamTransport::set_write_buffer_limits(PyObject* high, PyObject* low) {
  if (!flow_.set_limits(high, low)) return false;
  maybe_pause_protocol();
  return !PyErr_Occurred();
}

}  // namespace fastloop
