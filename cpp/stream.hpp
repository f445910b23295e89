// The stream transport shared by TCP and Unix sockets: asyncio.Transport's
// behaviour (selector_events._SelectorSocketTransport is the reference) on a
// libuv uv_stream_t.
//
// Reads land in the loop's read buffer (or straight in a BufferedProtocol's
// buffer) and go to the protocol's bound methods, looked up once per
// protocol. Writes try the syscall at once when nothing is queued; what is
// left is queued and all of it goes out in one uv_write (writev).
//
// Ownership: the transport's Python object keeps itself alive while its
// libuv handle is open and lets go in the close callback (see self_ref_).
#pragma once

#include <uv.h>

#include <cstddef>
#include <vector>

#include "loop.hpp"
#include "pyutil.hpp"

namespace fastloop {

enum class StreamKind { kTcp, kPipe };

class StreamTransport : public LoopResource {
 public:
  // Takes over `fd` (libuv closes it); `py_loop` is the Python loop object.
  StreamTransport(PyObject* py_loop, StreamKind kind);
  ~StreamTransport();
  StreamTransport(const StreamTransport&) = delete;
  StreamTransport& operator=(const StreamTransport&) = delete;

  // Opens the libuv handle on an existing connected socket fd. 0 or a libuv error.
  int open(int fd);
  // The stream a listener accepts into (already initialized on the loop).
  uv_stream_t* stream() noexcept { return reinterpret_cast<uv_stream_t*>(&handle_); }
  // Initializes the handle for accepting; the listener then calls uv_accept.
  int init_for_accept();
  // From here `owner`, the Python transport that owns this object, is kept
  // alive until the handle's close callback. It is what protocols and error
  // reports see as the transport.
  void adopt(PyObject* owner);

  // ---- asyncio.Transport ----
  bool write(PyObject* data);  // false with an exception set
  bool writelines(PyObject* iterable);
  bool write_eof();
  bool can_write_eof() const noexcept { return true; }
  void close();
  void abort() { force_close(nullptr); }
  void force_close(PyObject* exc);  // asyncio's _force_close(exc)
  bool is_closing() const noexcept { return closing_; }
  bool is_reading() const noexcept { return !paused_ && !closing_; }
  void pause_reading();
  void resume_reading();
  bool set_protocol(PyObject* protocol);
  PyObject* protocol() const noexcept { return protocol_; }
  size_t write_buffer_size() const noexcept;
  size_t high_water() const noexcept { return high_water_; }
  bool protocol_paused() const noexcept { return protocol_paused_; }
  size_t low_water() const noexcept { return low_water_; }
  bool set_write_buffer_limits(PyObject* high, PyObject* low);
  // Starts reading (asyncio starts after connection_made has run).
  void start_reading();
  int fileno() const noexcept;
  bool closed() const noexcept { return handle_closed_; }
  // asyncio's _call_connection_lost: the protocol's connection_lost(exc),
  // then the handle is closed and the protocol and server let go.
  bool call_connection_lost(PyObject* exc);
  // sendfile's "empty waiter": a future resolved once the write buffer is
  // empty; while it is set, write() refuses (asyncio's _make_empty_waiter).
  PyObject* make_empty_waiter();
  void reset_empty_waiter() noexcept { Py_CLEAR(empty_waiter_); }
  void close_with_loop() noexcept override;

  // The Python socket object to detach at close, the extra-info dict and the
  // asyncio Server to notify; all set by the Python glue.
  void set_socket(PyObject* sock) { Py_XSETREF(sock_, Py_XNewRef(sock)); }
  PyObject* socket_obj() const noexcept { return sock_; }
  void set_server(PyObject* server) { Py_XSETREF(server_, Py_XNewRef(server)); }
  // A pipe, FIFO or tty (asyncio's unix_events pipe transports): end of input
  // always closes the transport, write_eof() closes the fd after the buffer
  // drains (no half-close on a pipe), and errors name a pipe transport. A
  // write-only pipe's protocol need not have the read callbacks.
  void set_pipe_mode(bool write_only) noexcept {
    pipe_mode_ = true;
    write_only_ = write_only;
  }
  PyObject* server() const noexcept { return server_; }
  PyObject* py_loop() const noexcept { return py_loop_; }

 private:
  struct Chunk {
    PyObject* owner;  // keeps `base` alive
    const char* base;
    size_t len;
  };

  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf) noexcept;
  static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) noexcept;
  static void on_write(uv_write_t* req, int status) noexcept;
  static void on_close(uv_handle_t* h) noexcept;

  void read_data(ssize_t nread);
  void read_eof();
  void flush_queue();
  void after_write();
  void shutdown_now();
  void maybe_pause_protocol();
  void maybe_resume_protocol();
  // Calls protocol.pause_writing()/resume_writing(), reporting a failure.
  void call_flow_control(const char* method, const char* message);
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
  // KeyboardInterrupt leave the loop, anything else is a fatal error.
  void protocol_call_failed(const char* message);
  void schedule_connection_lost(PyObject* exc);
  void close_handle();
  void release_chunks(std::vector<Chunk>& chunks);
  // Resolves the empty waiter, if any: with None, or with `exc` set.
  void settle_empty_waiter(PyObject* exc);
  bool queue_bytes(PyObject* data, const char* base, size_t len, size_t skip);

  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } handle_{};
  uv_write_t write_req_{};
  StreamKind kind_;
  Loop* loop_;
  PyObject* py_loop_;             // strong
  PyObject* self_ref_ = nullptr;  // the Python object, while the handle is open
  PyObject* protocol_ = nullptr;
  PyObject* data_received_ = nullptr;  // bound methods of the protocol
  PyObject* get_buffer_ = nullptr;     // set for a BufferedProtocol
  PyObject* buffer_updated_ = nullptr;
  PyObject* eof_received_ = nullptr;
  PyObject* sock_ = nullptr;
  PyObject* server_ = nullptr;
  Py_buffer read_view_{};            // BufferedProtocol's buffer during a read
  PyObject* alloc_error_ = nullptr;  // get_buffer() failed: reported by on_read
  PyObject* empty_waiter_ = nullptr;
  bool read_view_held_ = false;

  std::vector<Chunk> queued_;     // not yet handed to libuv
  std::vector<Chunk> in_flight_;  // in the one uv_write in progress
  size_t queued_bytes_ = 0;
  bool writing_ = false;

  size_t high_water_ = 64 * 1024;
  size_t low_water_ = 16 * 1024;
  int conn_lost_ = 0;
  bool handle_open_ = false;
  bool handle_closed_ = false;
  bool reading_ = false;  // uv_read_start in effect
  bool paused_ = false;   // pause_reading()
  bool closing_ = false;
  bool eof_written_ = false;
  bool protocol_paused_ = false;
  bool protocol_connected_ = false;
  bool lost_scheduled_ = false;
  bool pipe_mode_ = false;
  bool write_only_ = false;
};

}  // namespace fastloop
