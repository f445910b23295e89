// The datagram transport (UDP, Unix datagram and any other non-stream socket)
// behind loop.create_datagram_endpoint(): asyncio's _SelectorDatagramTransport
// on the running Python is the reference for every behaviour.
//
// One uv_poll_t watches the socket; the syscalls are ours. As asyncio's
// selector queues a transport's reader and writer, the poll queues this
// transport's read and write handles in the loop's ready queue. The read
// handle reads a datagram (as asyncio's _read_ready does) and hands it to
// protocol.datagram_received(data, addr), and goes on, up to kReadsPerEvent
// datagrams while reading goes on (a pause or a close between two stops
// it): a burst costs one poll, as with uvloop and rloop. sendto() tries the
// socket at once when nothing is queued and queues what would block, for
// the write handle to send in order. The Python socket object
// keeps the fd: it is closed by the Python glue (fastloop/_datagram.py) after connection_lost, once
// this handle is closed.
//
// Addresses: for AF_INET and AF_INET6 the address tuples are made and parsed
// here, exactly as the socket module makes them (inet_ntop; IPv6 with flow
// info and scope id). The last address received is kept with its tuple, so a
// reply to it (sendto(data, addr) with that very tuple) needs no parsing, and
// a peer that sends again gets the same tuple object. Anything else (other
// families, host names, unusual objects) goes through the socket object's
// own recvfrom()/sendto(), so the socket module's rules and errors apply.
//
// Ownership follows owner.hpp (Lifetime::kPython, like StreamTransport).
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <cstddef>
#include <deque>

#include "handles.hpp"
#include "loop.hpp"
#include "owner.hpp"
#include "pyutil.hpp"
#include "stream_detail.hpp"

namespace fastloop {

class DatagramTransport final : public HandleOwner {
 public:
  // `py_loop` is the Python loop object. Captures the current context.
  explicit DatagramTransport(PyObject* py_loop);
  ~DatagramTransport() override;
  DatagramTransport(const DatagramTransport&) = delete;
  DatagramTransport& operator=(const DatagramTransport&) = delete;

  // Watches `sock` (a Python socket object; its fd stays the socket's).
  // `transport` is the Python transport protocols and error reports see;
  // `address` the remote address of a "connected" endpoint (None if not);
  // `connected` whether the socket has a peer (asyncio's extra['peername']):
  // then datagrams go out with send(). `header_size` is what a queued
  // datagram counts besides its bytes; `sends_empty` whether sendto(b"")
  // sends an empty datagram (3.13) rather than nothing. False with the
  // exception set; then nothing needs undoing.
  bool open(PyObject* py_self, PyObject* transport, PyObject* sock, PyObject* protocol,
            PyObject* address, bool connected, size_t header_size, bool sends_empty);

  // ---- asyncio.DatagramTransport; false means an exception is set ----
  bool sendto(PyObject* data, PyObject* addr);
  bool close();
  bool abort() { return force_close(nullptr); }
  bool force_close(PyObject* exc);  // asyncio's _force_close(exc)
  bool is_closing() const noexcept { return closing_; }
  bool is_reading() const noexcept { return !closing_ && !paused_; }
  bool pause_reading();
  bool resume_reading();
  // Starts reading (asyncio starts after connection_made has run).
  bool start_reading();
  // What the read and write handles call (_read_ready, _sendto_ready) when
  // the poll has queued them. False with the exception set when the
  // protocol raised: the handle reports it as asyncio's Handle does, and
  // the transport stays open.
  bool read_ready();
  bool write_ready();
  bool set_protocol(PyObject* protocol);
  PyObject* protocol() const noexcept { return protocol_; }
  size_t write_buffer_size() const noexcept { return buffer_size_; }
  bool protocol_paused() const noexcept { return flow_.paused(); }
  bool reader_polling() const noexcept { return (events_ & UV_READABLE) != 0; }
  bool writer_polling() const noexcept { return (events_ & UV_WRITABLE) != 0; }
  // The limits asyncio's _FlowControlMixin computed and checked; pauses if over.
  bool set_write_buffer_limits(PyObject* high, PyObject* low);
  // asyncio's _call_connection_lost: connection_lost(exc), then the handle
  // closes and the protocol is let go (the Python glue closes the socket).
  bool call_connection_lost(PyObject* exc);
  int fileno() const noexcept { return fd_; }

  void close_with_loop() noexcept override { close_handle(); }
  bool gc_active() const noexcept override { return events_ != 0; }
  // The Python object is garbage: stop watching the fd before the socket closes.
  void finalize() noexcept { close_handle(); }

  int traverse(visitproc visit, void* arg) const;
  void clear_references() noexcept;

 private:
  struct Queued {
    PyObject* data;  // bytes
    PyObject* addr;  // the address given to sendto(), or None
  };
  enum class Sent { kDone, kWouldBlock, kFailed };

  enum class Read { kDelivered, kNone, kRaised };

  // RuntimeError unless open() has run (the native half made by hand).
  bool check_opened() const;

  static void on_poll(uv_poll_t* poll, int status, int events) noexcept;
  // Reads one datagram and delivers it (kDelivered), finds none or an error
  // it handled (kNone), or the protocol raised (kRaised, exception set).
  Read read_one();
  // protocol.error_received() with the current exception (an OSError).
  Read error_received();
  // Sends one datagram; kFailed leaves the exception set.
  Sent send_one(PyObject* data, PyObject* addr);
  Sent send_native(const void* buf, size_t len, const sockaddr* to, socklen_t to_len) const;
  // The sockaddr for `addr`, if this code can make it exactly as the socket
  // module would; false means "let the socket object do it".
  bool native_address(PyObject* addr, sockaddr_storage* out, socklen_t* len) const;
  // The tuple for the address a datagram came from (new reference).
  PyObject* address_object(const sockaddr_storage& from, socklen_t len);
  // (Re)arms the poll for what is wanted now: reading, and writing while queued.
  bool update_poll();
  void maybe_pause_protocol();
  void maybe_resume_protocol();
  // asyncio's _fatal_error (called with the exception taken). False with
  // the exception set when _force_close could not schedule connection_lost.
  bool fatal_error(PyObject* exc, const char* message);
  bool schedule_connection_lost(PyObject* exc);
  void clear_buffer() noexcept;
  void release_handles() noexcept;

  uv_poll_t poll_{};
  HandleObject* read_handle_ = nullptr;   // calls _read_ready (see on_poll)
  HandleObject* write_handle_ = nullptr;  // calls _sendto_ready
  PyObject* py_loop_;                     // strong, released only by the destructor (see owner.hpp)
  PyObject* transport_ = nullptr;
  PyObject* protocol_ = nullptr;
  PyObject* sock_ = nullptr;
  PyObject* address_ = nullptr;  // the remote address of a connected endpoint
  std::deque<Queued> buffer_;
  size_t buffer_size_ = 0;
  size_t header_size_ = 0;
  stream_detail::WriteFlowControl flow_;
  int fd_ = -1;
  int family_ = AF_UNSPEC;
  int events_ = 0;  // what the poll watches (UV_READABLE | UV_WRITABLE)
  int conn_lost_ = 0;
  bool connected_ = false;
  bool sends_empty_ = false;
  bool closing_ = false;
  bool paused_ = false;
  bool started_ = false;  // start_reading() has run (after connection_made)
  bool protocol_connected_ = false;
  bool lost_scheduled_ = false;
  bool lost_called_ = false;  // call_connection_lost() has run: the socket is gone

  // The address of the last datagram received, and its tuple.
  sockaddr_storage last_from_{};
  socklen_t last_from_len_ = 0;
  PyObject* last_from_obj_ = nullptr;
};

}  // namespace fastloop
