// A listening TCP or Unix socket on a uv_stream_t: asyncio's _start_serving.
// Each accepted connection is handed to the Python method _on_connection of
// the listener's Python object, which makes its transport and protocol.
#pragma once

#include <uv.h>

#include "loop.hpp"
#include "pyutil.hpp"
#include "stream.hpp"

namespace fastloop {

class StreamListener : public LoopResource {
 public:
  StreamListener(PyObject* py_loop, StreamKind kind);
  ~StreamListener();
  StreamListener(const StreamListener&) = delete;
  StreamListener& operator=(const StreamListener&) = delete;

  // From here the Python object lives at least until the handle is closed.
  void adopt(PyObject* self);
  // Takes over the listening socket's fd; libuv closes it. 0 or a libuv error.
  int open(int fd);
  int listen(int backlog);
  // Accepts a pending connection into `transport`'s stream. 0 or a libuv error.
  int accept(StreamTransport* transport);
  void close() noexcept;
  bool closed() const noexcept { return !open_; }
  void close_with_loop() noexcept override { close(); }

 private:
  static void on_connection(uv_stream_t* server, int status) noexcept;
  static void on_close(uv_handle_t* h) noexcept;
  uv_stream_t* stream() noexcept { return reinterpret_cast<uv_stream_t*>(&handle_); }

  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } handle_{};
  StreamKind kind_;
  Loop* loop_;
  PyObject* py_loop_;             // strong
  PyObject* self_ref_ = nullptr;  // the Python object, while the handle is open
  bool open_ = true;
};

}  // namespace fastloop
