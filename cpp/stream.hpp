// The stream transport shared by TCP and Unix sockets and pipes:
// asyncio.Transport's behaviour (selector_events._SelectorSocketTransport and
// unix_events' pipe transports are the reference) on a libuv uv_stream_t.
//
// Reads land in the loop's read buffer (or straight in a BufferedProtocol's
// buffer, or, after a large read, straight in the bytes object that
// data_received will get) and go to the protocol's methods, looked up when
// they are called, as asyncio does. Writes try the syscall at once when nothing is queued;
// what is left is queued and all of it goes out in one uv_write (writev).
//
// Ownership and re-entrancy (owner.hpp): the libuv handle is initialised by
// open() or prepare_accept(), which make the loop keep this object's Python
// owner (the _core.StreamTransport instance) alive until the close callback.
// Protocol methods called from libuv callbacks run in a CallbackScope: in the
// context current when the transport was made, with the owner held. A
// protocol method may close, abort or pause the transport at any point,
// including from get_buffer(), which libuv calls in the middle of its read:
// what libuv forbids there (stopping the read, closing) is deferred to the
// read callback that follows.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "loop.hpp"
#include "owner.hpp"
#include "pyutil.hpp"
#include "stream_detail.hpp"

namespace fastloop {

enum class StreamKind { kTcp, kPipe };

class StreamTransport final : public HandleOwner {
 public:
  // `py_loop` is the Python loop object. The libuv handle is made later, by
  // open() or prepare_accept(). Captures the current context.
  StreamTransport(PyObject* py_loop, StreamKind kind);
  ~StreamTransport() override;
  StreamTransport(const StreamTransport&) = delete;
  StreamTransport& operator=(const StreamTransport&) = delete;

  // Makes the libuv handle (kept alive through `py_self`, the Python object
  // owning this one) and takes over the connected `fd`: libuv closes it from
  // here. On failure (false, exception set) the fd is still the caller's.
  bool open(PyObject* py_self, int fd);
  // Makes the libuv handle for a listener to accept into.
  bool prepare_accept(PyObject* py_self);
  uv_stream_t* stream() noexcept { return reinterpret_cast<uv_stream_t*>(&handle_); }
  // The Python transport protocols and error reports see (the object that
  // holds this one). Set once, before the transport starts.
  void set_transport(PyObject* transport) { Py_XSETREF(transport_, Py_XNewRef(transport)); }

  // ---- asyncio.Transport; false means an exception is set ----
  bool write(PyObject* data);
  bool writelines(PyObject* iterable);
  bool write_eof();
  bool close();
  bool abort() { return force_close(nullptr); }
  bool force_close(PyObject* exc);  // asyncio's _force_close(exc)
  bool is_closing() const noexcept { return closing_; }
  bool is_reading() const noexcept { return !paused_ && !closing_; }
  void pause_reading();
  bool resume_reading();
  bool set_protocol(PyObject* protocol);
  PyObject* protocol() const noexcept { return protocol_; }
  size_t write_buffer_size() const noexcept;
  bool protocol_paused() const noexcept { return flow_.paused(); }
  // The limits asyncio's _FlowControlMixin computed and checked (Python
  // numbers, kept there for get_write_buffer_limits); pauses if over.
  bool set_write_buffer_limits(PyObject* high, PyObject* low);
  // Starts reading (asyncio starts after connection_made has run).
  bool start_reading();
  // The end of input that arrived with data in one poll, an iteration later
  // (see handle_read); a no-op if nothing is pending or reading is paused.
  void deliver_eof();
  int fileno() const noexcept;
  // asyncio's _call_connection_lost: the protocol's connection_lost(exc),
  // then the handle is closed and the protocol and server let go.
  bool call_connection_lost(PyObject* exc);
  // The handle was opened and connection_lost never ran: the transport was
  // never closed (asyncio's "unclosed transport" ResourceWarning).
  bool unclosed() const noexcept { return was_open_ && !lost_called_; }
  // sendfile's "empty waiter": a future resolved once the write buffer is
  // empty; while it is set, write() refuses (asyncio's _make_empty_waiter).
  PyObject* make_empty_waiter();
  void reset_empty_waiter() noexcept { Py_CLEAR(empty_waiter_); }
  void close_with_loop() noexcept override;
  bool gc_active() const noexcept override { return reading_ || writing_; }
  // The Python object is garbage (a transport the program dropped without
  // closing it, as asyncio's __del__ closes the socket): close the handle.
  void finalize() noexcept { close_with_loop(); }
  // Closes a handle that never carried a connection (a failed accept).
  void discard() noexcept { close_stream(); }

  // The Python socket object to detach at close, the extra-info dict and the
  // asyncio Server to notify; all set by the Python glue.
  void set_socket(PyObject* sock) { Py_XSETREF(sock_, Py_XNewRef(sock)); }
  PyObject* socket_obj() const noexcept { return sock_; }
  void set_server(PyObject* server) { Py_XSETREF(server_, Py_XNewRef(server)); }
  // A pipe, FIFO or tty (asyncio's unix_events pipe transports): end of input
  // always closes the transport, write_eof() closes the fd after the buffer
  // drains (no half-close on a pipe), an exception from data_received is
  // reported and reading goes on, and errors name a pipe transport. A
  // write-only pipe's protocol need not have the read callbacks.
  // `pipe_fd` is the pipe object's own fd (libuv works on a duplicate): after
  // loop.close() a write goes straight to it, as asyncio's would.
  void set_pipe_mode(bool write_only, int pipe_fd) noexcept {
    pipe_mode_ = true;
    write_only_ = write_only;
    pipe_fd_ = pipe_fd;
  }
  PyObject* server() const noexcept { return server_; }
  PyObject* py_loop() const noexcept { return py_loop_; }

  // Garbage collector support for the owning Python object.
  int traverse(visitproc visit, void* arg) const;
  void clear_references() noexcept;

 private:
  struct Chunk {
    PyObject* owner;  // keeps `base` alive
    const char* base;
    size_t len;
  };

  // A read at least this large makes the next one go straight into a bytes
  // object (alloc_direct_read) instead of through the loop's buffer.
  static constexpr size_t kDirectReadMin = size_t{64} * 1024;
  // ...as long as the kernel holds no more than this: glibc serves 128 KiB and
  // more with a fresh mmap, whose page faults cost more than the copy saved.
  static constexpr size_t kDirectReadMax = size_t{120} * 1024;

  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf) noexcept;
  // Points `buf` at a new bytes object sized to what the kernel holds for
  // this fd (FIONREAD); false (nothing changed) if that is little or unknown.
  bool alloc_direct_read(uv_buf_t* buf) noexcept;
  static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) noexcept;
  static void on_write(uv_write_t* req, int status) noexcept;

  bool init_stream(PyObject* py_self);
  // Is `fd` something epoll can watch? (/dev/null is not: libuv would abort.)
  bool check_pollable(int fd);
  void handle_read(ssize_t nread);
  void read_data(ssize_t nread);
  void read_eof();
  // uv_read_stop, or deferred to on_read while libuv is inside on_alloc.
  void stop_reading() noexcept;
  // Sends what it can of `bufs` now, queues the rest (owned by `owners`).
  bool send_or_queue(const uv_buf_t* bufs, size_t nbufs, PyObject* const* owners);
  bool write_after_loop_close(const uv_buf_t* bufs, size_t nbufs);
  void flush_queue();
  void after_write();
  bool shutdown_now();
  void maybe_pause_protocol();
  void maybe_resume_protocol();
  // Calls protocol.pause_writing()/resume_writing(), reporting a failure.
  void fatal_error(PyObject* exc, const char* message);
  void fatal_uv_error(int err, const char* message);
  const char* read_error_message() const noexcept {
    return pipe_mode_ ? "Fatal read error on pipe transport"
                      : "Fatal read error on socket transport";
  }
  const char* write_error_message() const noexcept {
    return pipe_mode_ ? "Fatal write error on pipe transport"
                      : "Fatal write error on socket transport";
  }
  // The current exception (set by a failed protocol call): SystemExit and
  // KeyboardInterrupt leave the loop, anything else is a fatal error (on a
  // pipe, a reported one).
  void protocol_call_failed(const char* message);
  bool schedule_connection_lost(PyObject* exc);
  bool schedule_eof();
  // Detaches the Python socket object (libuv closes the fd), then uv_close.
  void close_stream() noexcept;
  void handle_closed() noexcept override;
  static void release_chunks(std::vector<Chunk>& chunks);
  // Resolves the empty waiter, if any: with None, or with `exc` set.
  void settle_empty_waiter(PyObject* exc);
  bool check_loop_open() const noexcept;

  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } handle_{};
  std::unique_ptr<uv_write_t> write_req_;  // made at the first queued write
  StreamKind kind_;
  PyObject* py_loop_;  // strong, released only by the destructor (see owner.hpp)
  PyObject* transport_ = nullptr;
  PyObject* protocol_ = nullptr;
  PyObject* sock_ = nullptr;
  PyObject* server_ = nullptr;
  std::unique_ptr<Py_buffer> read_view_;  // BufferedProtocol's buffer during a read
  PyObject* alloc_error_ = nullptr;       // get_buffer() failed: reported by on_read
  PyObject* empty_waiter_ = nullptr;
  PyObject* direct_read_ = nullptr;  // the bytes object a read is landing in, if any
  bool read_view_held_ = false;
  bool expect_large_read_ = false;  // the last read was at least kDirectReadMin

  std::vector<Chunk> queued_;     // not yet handed to libuv
  std::vector<Chunk> in_flight_;  // in the one uv_write in progress
  size_t queued_bytes_ = 0;
  bool writing_ = false;

  stream_detail::WriteFlowControl flow_;
  int conn_lost_ = 0;
  int unpollable_errno_ = 0;  // the fd cannot be watched (see check_pollable)
  int pipe_fd_ = -1;          // see set_pipe_mode
  bool buffered_ = false;     // the protocol is a BufferedProtocol
  bool was_open_ = false;
  bool lost_called_ = false;
  bool reading_ = false;  // uv_read_start in effect
  bool paused_ = false;   // pause_reading()
  bool closing_ = false;
  bool eof_written_ = false;
  bool protocol_connected_ = false;
  bool lost_scheduled_ = false;
  bool pipe_mode_ = false;
  bool write_only_ = false;
  bool eof_pending_ = false;        // end of input seen, not yet delivered (see deliver_eof)
  uint64_t data_poll_ = 0;          // the loop's poll_count() when data was last delivered
  bool in_alloc_ = false;           // libuv is inside on_alloc (get_buffer)
  bool read_stop_pending_ = false;  // deferred out of on_alloc
  bool close_pending_ = false;      // deferred out of on_alloc
};

}  // namespace fastloop
