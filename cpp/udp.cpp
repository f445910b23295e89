// DatagramTransport (udp.hpp). Each method names the asyncio method it
// follows (selector_events._SelectorDatagramTransport and its bases, on the
// running Python: the glue passes in what differs between versions).
#include "udp.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "errors.hpp"
#include "hooks.hpp"
#include "stream_detail.hpp"

namespace fastloop {

using stream_detail::call_method1;
using stream_detail::is_exit_exception;

namespace {

// asyncio warns after this many sends to a lost connection
// (constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES).
constexpr int kLogThresholdConnLostWrites = 5;

// Datagrams read per readiness event at most (see udp.hpp).
constexpr int kReadsPerEvent = 32;

constexpr const char* kReadError = "Fatal read error on datagram transport";
constexpr const char* kWriteError = "Fatal write error on datagram transport";

bool would_block(int err) noexcept {
  return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
}

// The exception of a BlockingIOError or InterruptedError that the socket
// object raised: asyncio retries those when the socket is writable again.
bool is_retry_exception() noexcept {
  return PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
         PyErr_ExceptionMatches(PyExc_InterruptedError);
}

PyObject* call_method2(PyObject* obj, PyObject* name, PyObject* a, PyObject* b) noexcept {
  PyObject* args[3] = {obj, a, b};
  return PyObject_VectorcallMethod(name, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
}

}  // namespace

DatagramTransport::DatagramTransport(PyObject* py_loop)
    : HandleOwner(core_of(py_loop), Lifetime::kPython), py_loop_(Py_NewRef(py_loop)) {
  // Protocol callbacks run in a copy of the context current now, as asyncio
  // registers the transport's reader with a copy of it.
  if (!capture_context()) PyErr_Clear();
}

DatagramTransport::~DatagramTransport() {
  // The handle is closed by now (owner.hpp): only Python references remain.
  clear_references();
  Py_CLEAR(sock_);
  Py_CLEAR(py_loop_);
}

void DatagramTransport::clear_buffer() noexcept {
  std::deque<Queued> buffer;
  buffer.swap(buffer_);
  buffer_size_ = 0;
  for (Queued& q : buffer) {
    Py_DECREF(q.data);
    Py_DECREF(q.addr);
  }
}

void DatagramTransport::release_handles() noexcept {
  // A handle still in the ready queue runs as a cancelled one: nothing.
  for (HandleObject** slot : {&read_handle_, &write_handle_}) {
    if (HandleObject* h = std::exchange(*slot, nullptr)) {
      cancel_handle(h);
      Py_DECREF(h);
    }
  }
}

void DatagramTransport::clear_references() noexcept {
  release_handles();
  clear_buffer();
  Py_CLEAR(protocol_);
  Py_CLEAR(transport_);
  Py_CLEAR(address_);
  Py_CLEAR(last_from_obj_);
  // sock_ stays while the handle lives: the handle watches its fd.
  if (!handle_alive()) Py_CLEAR(sock_);
}

int DatagramTransport::traverse(visitproc visit, void* arg) const {
  Py_VISIT(py_loop_);
  Py_VISIT(transport_);
  Py_VISIT(protocol_);
  Py_VISIT(address_);
  Py_VISIT(read_handle_);
  Py_VISIT(write_handle_);
  for (const Queued& q : buffer_) Py_VISIT(q.addr);
  // Not sock_: the socket object would close the fd from its own finalizer
  // while the handle still watches it, if the collector finalized it first.
  return traverse_base(visit, arg);
}

// ---- opening ----------------------------------------------------------------------

bool DatagramTransport::open(PyObject* py_self, PyObject* transport, PyObject* sock,
                             PyObject* protocol, PyObject* address, bool connected,
                             size_t header_size, bool sends_empty) {
  if (handle_alive() || sock_ != nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "the datagram transport is already open");
    return false;
  }
  if (!loop()->check_open()) return false;
  const int fd = PyObject_AsFileDescriptor(sock);
  if (fd < 0) return false;
  sockaddr_storage name{};
  socklen_t name_len = sizeof(name);
  const int family =
      getsockname(fd, reinterpret_cast<sockaddr*>(&name), &name_len) == 0 ? name.ss_family : -1;
  // asyncio's transports take the fd's place in the selector: a reader or
  // writer added on it before goes (and libuv refuses an fd it watches).
  loop()->fd_watchers().evict(fd);
  // The handles the poll queues (asyncio's reader and writer), in the
  // transport's context, made before the handle so a failure leaves nothing.
  Ref read_cb(PyObject_GetAttr(py_self, g_str.read_ready));
  Ref write_cb(read_cb ? PyObject_GetAttr(py_self, g_str.sendto_ready) : nullptr);
  if (!write_cb) return false;
  HandleObject* read_handle = new_handle(py_loop_, loop(), read_cb.get(), nullptr, 0, context());
  HandleObject* write_handle =
      read_handle != nullptr ? new_handle(py_loop_, loop(), write_cb.get(), nullptr, 0, context())
                             : nullptr;
  const bool ok =
      write_handle != nullptr && init_handle(&poll_, py_self, [fd](uv_loop_t* l, uv_poll_t* p) {
        return uv_poll_init_socket(l, p, fd);
      });
  if (!ok) {
    Py_XDECREF(read_handle);
    Py_XDECREF(write_handle);
    return false;
  }
  read_handle_ = read_handle;
  write_handle_ = write_handle;
  fd_ = fd;
  family_ = family;
  sock_ = Py_NewRef(sock);
  transport_ = Py_NewRef(transport);
  protocol_ = Py_NewRef(protocol);
  protocol_connected_ = true;
  address_ = address == Py_None ? nullptr : Py_NewRef(address);
  connected_ = connected;
  header_size_ = header_size;
  sends_empty_ = sends_empty;
  return true;
}

bool DatagramTransport::set_protocol(PyObject* protocol) {
  Py_XSETREF(protocol_, Py_NewRef(protocol));
  protocol_connected_ = true;
  return true;
}

// ---- watching the socket ------------------------------------------------------------

bool DatagramTransport::update_poll() {
  int want = 0;
  if (started_ && is_reading() && conn_lost_ == 0) want |= UV_READABLE;
  if (!buffer_.empty()) want |= UV_WRITABLE;
  if (want == events_) return true;
  if (!handle_open()) {
    events_ = 0;
    // asyncio would (re)register with its selector, which a closed loop refuses.
    return want == 0 || loop()->check_open();
  }
  const int err = want == 0 ? uv_poll_stop(&poll_) : uv_poll_start(&poll_, want, on_poll);
  if (err < 0) {
    events_ = 0;
    set_uv_error(err);
    return false;
  }
  events_ = want;
  return true;
}

void DatagramTransport::on_poll(uv_poll_t* poll, int status, int events) noexcept {
  auto* self = owner_of<DatagramTransport>(poll->data);
  GilFromLibuv gil(self->loop());
  if (status < 0) {
    // An error on the socket (POLLERR: an ICMP error for a datagram sent
    // earlier). libuv has stopped the handle; asyncio's level-triggered
    // epoll reports the fd to its callbacks, whose recvfrom() or sendto()
    // then raises the error: arm the poll again and do the same.
    events = self->events_;
    self->events_ = 0;
    if (!self->update_poll()) PyErr_WriteUnraisable(self->transport_);
  }
  // As asyncio's selector does with its reader and writer: their handles
  // join the ready queue, behind the callbacks that were ready before the
  // poll, so those run first (a task may be about to await a datagram).
  if ((events & UV_READABLE) != 0 && self->reader_polling() && self->read_handle_ != nullptr) {
    self->loop()->push_ready_now(self->read_handle_);
  }
  if ((events & UV_WRITABLE) != 0 && self->writer_polling() && self->write_handle_ != nullptr) {
    self->loop()->push_ready_now(self->write_handle_);
  }
}

// ---- reading ----------------------------------------------------------------------

bool DatagramTransport::start_reading() {
  started_ = true;
  return update_poll();
}

bool DatagramTransport::pause_reading() {
  if (!is_reading()) return true;
  paused_ = true;
  return update_poll();
}

bool DatagramTransport::resume_reading() {
  if (closing_ || !paused_) return true;
  paused_ = false;
  return update_poll();
}

PyObject* DatagramTransport::address_object(const sockaddr_storage& from, socklen_t len) {
  if (last_from_obj_ != nullptr && len == last_from_len_ &&
      std::memcmp(&from, &last_from_, len) == 0) {
    return Py_NewRef(last_from_obj_);
  }
  // What the socket module's makesockaddr() makes of these families.
  char host[INET6_ADDRSTRLEN];
  PyObject* addr = nullptr;
  if (from.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(from);
    if (inet_ntop(AF_INET, &a.sin_addr, host, sizeof(host)) == nullptr) {
      return PyErr_SetFromErrno(PyExc_OSError);
    }
    addr = Py_BuildValue("(si)", host, static_cast<int>(ntohs(a.sin_port)));
  } else {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(from);
    if (inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof(host)) == nullptr) {
      return PyErr_SetFromErrno(PyExc_OSError);
    }
    addr = Py_BuildValue("(siII)", host, static_cast<int>(ntohs(a.sin6_port)),
                         static_cast<unsigned int>(ntohl(a.sin6_flowinfo)),
                         static_cast<unsigned int>(a.sin6_scope_id));
  }
  if (addr == nullptr) return nullptr;
  std::memcpy(&last_from_, &from, len);
  last_from_len_ = len;
  Py_XSETREF(last_from_obj_, Py_NewRef(addr));
  return addr;
}

bool DatagramTransport::read_ready() {
  // The reader's handle: a burst costs one poll (udp.hpp). Reading stops
  // when the protocol pauses or closes the transport.
  for (int i = 0; i < kReadsPerEvent && reader_polling(); ++i) {
    switch (read_one()) {
      case Read::kDelivered:
        continue;
      case Read::kNone:
        return true;
      case Read::kRaised:
        return false;
    }
  }
  return true;
}

DatagramTransport::Read DatagramTransport::read_one() {
  // asyncio's _read_ready: one datagram. What the protocol raises propagates
  // to the handle, which reports it as asyncio's Handle does.
  if (conn_lost_ != 0 || protocol_ == nullptr) return Read::kNone;
  Ref data;
  Ref addr;
  if (family_ == AF_INET || family_ == AF_INET6) {
    sockaddr_storage from{};
    socklen_t from_len = sizeof(from);
    Loop* l = loop();
    ssize_t n = 0;
    do {
      n = recvfrom(fd_, l->read_buffer(), l->read_buffer_size(), 0,
                   reinterpret_cast<sockaddr*>(&from), &from_len);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (would_block(errno)) return Read::kNone;
      // E.g. ConnectionRefusedError: an ICMP error for an earlier datagram.
      PyErr_SetFromErrno(PyExc_OSError);
      return error_received();
    }
    data = Ref(PyBytes_FromStringAndSize(l->read_buffer(), n));
    if (data) addr = Ref(address_object(from, from_len));
  } else {
    // Other families: the socket object's recvfrom() makes the address.
    Ref size(PyLong_FromSize_t(loop()->read_buffer_size()));
    Ref pair(size ? call_method1(sock_, g_str.recvfrom, size.get()) : nullptr);
    if (pair && PyTuple_Check(pair.get()) && PyTuple_GET_SIZE(pair.get()) == 2) {
      data = Ref::borrow(PyTuple_GET_ITEM(pair.get(), 0));
      addr = Ref::borrow(PyTuple_GET_ITEM(pair.get(), 1));
    } else if (pair) {
      PyErr_SetString(PyExc_TypeError, "socket.recvfrom() did not return (data, address)");
    } else if (is_retry_exception()) {
      PyErr_Clear();
      return Read::kNone;
    } else if (PyErr_ExceptionMatches(PyExc_OSError)) {
      return error_received();
    }
  }
  if (!data || !addr) {
    if (is_exit_exception()) return Read::kRaised;
    Ref exc(take_exception());
    return fatal_error(exc.get(), kReadError) ? Read::kNone : Read::kRaised;
  }
  Ref r(call_method2(protocol_, g_str.datagram_received, data.get(), addr.get()));
  return r ? Read::kDelivered : Read::kRaised;
}

DatagramTransport::Read DatagramTransport::error_received() {
  Ref exc(take_exception());
  if (protocol_ == nullptr) return Read::kNone;
  Ref r(call_method1(protocol_, g_str.error_received, exc.get()));
  return r ? Read::kNone : Read::kRaised;
}

// ---- writing ----------------------------------------------------------------------

bool DatagramTransport::native_address(PyObject* addr, sockaddr_storage* out,
                                       socklen_t* len) const {
  if (last_from_obj_ != nullptr && addr == last_from_obj_) {
    // The very tuple made for a datagram received: its address is known.
    std::memcpy(out, &last_from_, last_from_len_);
    *len = last_from_len_;
    return true;
  }
  // (host, port) with a dotted-quad host, the one form whose conversion is
  // plain; the socket module resolves names, "", "<broadcast>"...
  if (family_ != AF_INET || !PyTuple_CheckExact(addr) || PyTuple_GET_SIZE(addr) != 2) return false;
  PyObject* host = PyTuple_GET_ITEM(addr, 0);
  PyObject* port = PyTuple_GET_ITEM(addr, 1);
  if (!PyUnicode_CheckExact(host) || !PyLong_CheckExact(port)) return false;
  const long p = PyLong_AsLong(port);
  if (p < 0 || p > 0xffff) {
    PyErr_Clear();  // overflow: the socket module raises its own error
    return false;
  }
  Py_ssize_t size = 0;
  const char* text = PyUnicode_AsUTF8AndSize(host, &size);
  if (text == nullptr || static_cast<size_t>(size) != std::strlen(text)) {
    PyErr_Clear();
    return false;
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(p));
  if (inet_pton(AF_INET, text, &a.sin_addr) != 1) return false;
  std::memcpy(out, &a, sizeof(a));
  *len = sizeof(a);
  return true;
}

DatagramTransport::Sent DatagramTransport::send_native(const void* buf, size_t len,
                                                       const sockaddr* to, socklen_t to_len) const {
  ssize_t n = 0;
  do {
    n = to == nullptr ? ::send(fd_, buf, len, 0) : ::sendto(fd_, buf, len, 0, to, to_len);
  } while (n < 0 && errno == EINTR);
  if (n >= 0) return Sent::kDone;
  if (would_block(errno)) return Sent::kWouldBlock;
  PyErr_SetFromErrno(PyExc_OSError);
  return Sent::kFailed;
}

DatagramTransport::Sent DatagramTransport::send_one(PyObject* data, PyObject* addr) {
  // asyncio: `self._sock.send(data)` with a peer, else `self._sock.sendto(data, addr)`.
  // Called only while the socket is ours (before connection_lost).
  sockaddr_storage to{};
  socklen_t to_len = 0;
  if (connected_ || native_address(addr, &to, &to_len)) {
    const sockaddr* dest = connected_ ? nullptr : reinterpret_cast<const sockaddr*>(&to);
    if (PyBytes_CheckExact(data)) {
      return send_native(PyBytes_AS_STRING(data), static_cast<size_t>(PyBytes_GET_SIZE(data)), dest,
                         to_len);
    }
    Py_buffer view{};
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) == 0) {
      const Sent sent = send_native(view.buf, static_cast<size_t>(view.len), dest, to_len);
      PyBuffer_Release(&view);
      return sent;
    }
    PyErr_Clear();  // the socket object raises its own error below
  }
  Ref r(connected_ ? call_method1(sock_, g_str.send, data)
                   : call_method2(sock_, g_str.sendto, data, addr));
  if (r) return Sent::kDone;
  if (is_retry_exception()) {
    PyErr_Clear();
    return Sent::kWouldBlock;
  }
  return Sent::kFailed;
}

bool DatagramTransport::check_opened() const {
  if (transport_ != nullptr) return true;
  PyErr_SetString(PyExc_RuntimeError, "the datagram transport is not open");
  return false;
}

bool DatagramTransport::sendto(PyObject* data, PyObject* addr) {
  // asyncio's sendto.
  if (!check_opened()) return false;
  if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
    Ref name(PyType_GetName(Py_TYPE(data)));
    if (name) {
      PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not %R",
                   name.get());
    }
    return false;
  }
  if (!sends_empty_) {
    const Py_ssize_t size = PyObject_Size(data);
    if (size < 0) return false;
    if (size == 0) return true;  // dropped before 3.13
  }
  if (address_ != nullptr) {
    if (addr != Py_None && addr != address_) {
      const int same = PyObject_RichCompareBool(addr, address_, Py_EQ);
      if (same < 0) return false;
      if (same == 0) {
        PyErr_Format(PyExc_ValueError, "Invalid address: must be None or %S", address_);
        return false;
      }
    }
    addr = address_;
  }
  if (conn_lost_ != 0 && address_ != nullptr) {
    if (conn_lost_ >= kLogThresholdConnLostWrites) {
      Ref r(PyObject_CallOneArg(g_hooks.log_warning, g_str.send_raised));
      if (!r) return false;
    }
    ++conn_lost_;
    return true;
  }
  if (lost_called_) {
    // asyncio's transport has let go of its socket and loop by now: its
    // sendto() fails with AttributeError (on None) before sending anything.
    PyErr_SetString(PyExc_AttributeError,
                    "sendto() on a datagram transport whose connection_lost() has run");
    return false;
  }
  if (buffer_.empty()) {
    // Nothing queued: try the socket right away.
    switch (send_one(data, addr)) {
      case Sent::kDone:
        return true;
      case Sent::kWouldBlock:
        break;  // queued below; the writable callback sends it
      case Sent::kFailed: {
        if (is_exit_exception()) return false;
        const bool os_error = PyErr_ExceptionMatches(PyExc_OSError) != 0;
        Ref exc(take_exception());
        if (os_error) {
          if (protocol_ == nullptr) return true;
          Ref r(call_method1(protocol_, g_str.error_received, exc.get()));
          return static_cast<bool>(r);
        }
        return fatal_error(exc.get(), kWriteError);
      }
    }
  }
  // What is queued must not change under us: keep an immutable copy.
  Ref copy(PyBytes_CheckExact(data) ? Py_NewRef(data) : PyBytes_FromObject(data));
  if (!copy) return false;
  const auto size = static_cast<size_t>(PyBytes_GET_SIZE(copy.get()));
  buffer_.push_back(Queued{copy.release(), Py_NewRef(addr)});
  buffer_size_ += size + header_size_;
  if (buffer_.size() == 1 && !update_poll()) return false;
  maybe_pause_protocol();
  return !PyErr_Occurred();
}

bool DatagramTransport::write_ready() {
  // asyncio's _sendto_ready, run by the writer's handle: what the protocol
  // raises propagates to it.
  while (!buffer_.empty()) {
    Queued q = buffer_.front();
    buffer_.pop_front();
    buffer_size_ -= static_cast<size_t>(PyBytes_GET_SIZE(q.data)) + header_size_;
    const Sent sent = send_one(q.data, q.addr);
    if (sent == Sent::kWouldBlock) {
      buffer_.push_front(q);  // the next writability retries
      buffer_size_ += static_cast<size_t>(PyBytes_GET_SIZE(q.data)) + header_size_;
      break;
    }
    Py_DECREF(q.data);
    Py_DECREF(q.addr);
    if (sent == Sent::kFailed) {
      if (is_exit_exception()) return false;
      if (PyErr_ExceptionMatches(PyExc_OSError)) return error_received() != Read::kRaised;
      Ref exc(take_exception());
      return fatal_error(exc.get(), kWriteError);
    }
  }
  maybe_resume_protocol();  // may queue more datagrams
  if (buffer_.empty()) {
    if (!update_poll()) return false;
    if (closing_ && transport_ != nullptr) {
      // Through the glue's _call_connection_lost, which closes the socket.
      Ref r(call_method1(transport_, g_str.call_connection_lost, Py_None));
      if (!r) return false;
    }
  }
  return true;
}

// ---- flow control -------------------------------------------------------------------

void DatagramTransport::maybe_pause_protocol() {
  flow_.maybe_pause(buffer_size_, protocol_, transport_, loop());
}

void DatagramTransport::maybe_resume_protocol() {
  flow_.maybe_resume(buffer_size_, protocol_, transport_, loop());
}

bool DatagramTransport::set_write_buffer_limits(PyObject* high, PyObject* low) {
  if (!flow_.set_limits(high, low)) return false;
  maybe_pause_protocol();
  return !PyErr_Occurred();
}

// ---- closing ----------------------------------------------------------------------

bool DatagramTransport::close() {
  // asyncio's _SelectorTransport.close.
  if (!check_opened()) return false;
  if (closing_) return true;
  closing_ = true;
  bool ok = update_poll();  // the reader goes
  if (buffer_.empty()) {
    ++conn_lost_;
    ok = schedule_connection_lost(nullptr) && ok;
  }
  // Else the queued datagrams go out first (write_ready).
  return ok;
}

bool DatagramTransport::force_close(PyObject* exc) {
  // asyncio's _force_close.
  if (!check_opened()) return false;
  if (conn_lost_ != 0) return true;
  clear_buffer();
  closing_ = true;
  ++conn_lost_;
  const bool ok = update_poll();
  return schedule_connection_lost(exc) && ok;
}

bool DatagramTransport::schedule_connection_lost(PyObject* exc) {
  if (lost_scheduled_) return true;
  // asyncio's call_soon: refused once the loop is closed.
  if (!loop()->check_open() || transport_ == nullptr) return false;
  Ref method(PyObject_GetAttr(transport_, g_str.call_connection_lost));
  PyObject* arg = exc != nullptr ? exc : Py_None;
  if (!method || !loop()->call_soon(py_loop_, method.get(), &arg, 1)) return false;
  lost_scheduled_ = true;
  return true;
}

bool DatagramTransport::fatal_error(PyObject* exc, const char* message) {
  // asyncio's _fatal_error: OSErrors are logged in debug mode, the rest
  // reported; then _force_close (whose call_soon a closed loop refuses).
  if (transport_ != nullptr) {
    Ref r(
        PyObject_CallFunction(g_hooks.transport_error, "OOsO", transport_, exc, message, Py_True));
    if (!r) PyErr_WriteUnraisable(transport_);
  }
  return force_close(exc);
}

bool DatagramTransport::call_connection_lost(PyObject* exc) {
  PyObject* error = nullptr;
  lost_called_ = true;
  if (conn_lost_ == 0) conn_lost_ = 1;
  if (protocol_connected_ && protocol_ != nullptr) {
    Ref r(call_method1(protocol_, g_str.connection_lost, exc != nullptr ? exc : Py_None));
    if (!r) error = take_exception();
  }
  // What asyncio does in its `finally:`: the socket goes (the glue closes it
  // after this; the handle must stop watching its fd first).
  events_ = 0;
  close_handle();
  release_handles();
  protocol_connected_ = false;
  Py_CLEAR(protocol_);
  Py_CLEAR(sock_);
  if (error != nullptr) {
    restore_exception(error);
    return false;
  }
  return true;
}

}  // namespace fastloop
