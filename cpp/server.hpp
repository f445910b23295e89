// A listening TCP or Unix socket on a uv_stream_t: asyncio's _start_serving.
// Each accepted connection is handed to the Python method _on_connection of
// the listener's Python object (fastloop/_transports.py Listener), which
// makes its transport and protocol, in a copy of the context current when the
// server was made (asyncio accepts in a task that copies it).
//
// libuv listens on a duplicate of the socket's fd and closes that copy; the
// Python socket keeps its own fd, which asyncio's Server closes (or leaves
// to the socket's own ResourceWarning) as with asyncio's loop, whether the
// listener was closed by Server.close() or by loop.close().
#pragma once

#include <uv.h>

#include "loop.hpp"
#include "owner.hpp"
#include "pyutil.hpp"
#include "stream.hpp"

namespace fastloop {

class StreamListener final : public HandleOwner {
 public:
  StreamListener(PyObject* py_loop, StreamKind kind);
  ~StreamListener() override;
  StreamListener(const StreamListener&) = delete;
  StreamListener& operator=(const StreamListener&) = delete;

  // Listens on a duplicate of the listening socket `fd`; `py_self` is the
  // Python object owning this one. False with the exception set; then
  // nothing is left open.
  bool open(PyObject* py_self, int fd, int backlog);
  // Accepts a pending connection into `transport` (`py_transport` owns it).
  // False with OSError set; the transport is then left closed.
  bool accept(StreamTransport* transport, PyObject* py_transport);
  void close() noexcept { close_handle(); }
  bool closed() const noexcept { return !handle_open(); }

  int traverse(visitproc visit, void* arg) const;

 private:
  static void on_connection(uv_stream_t* server, int status) noexcept;
  uv_stream_t* stream() noexcept { return reinterpret_cast<uv_stream_t*>(&handle_); }

  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } handle_{};
  StreamKind kind_;
  PyObject* py_loop_;  // strong, released only by the destructor (see owner.hpp)
};

}  // namespace fastloop
