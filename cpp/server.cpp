#include "server.hpp"

#include <utility>

#include "errors.hpp"
#include "hooks.hpp"

namespace fastloop {

StreamListener::StreamListener(PyObject* py_loop, StreamKind kind)
    : kind_(kind), loop_(core_of(py_loop)), py_loop_(Py_NewRef(py_loop)) {
  if (kind_ == StreamKind::kTcp) {
    uv_tcp_init(loop_->uv(), &handle_.tcp);
  } else {
    uv_pipe_init(loop_->uv(), &handle_.pipe, 0);
  }
  handle_.tcp.data = this;
  loop_->add_resource(this);
}

StreamListener::~StreamListener() {
  Py_CLEAR(py_loop_);
}

void StreamListener::adopt(PyObject* self) {
  self_ref_ = Py_NewRef(self);
}

int StreamListener::open(int fd) {
  loop_->fd_watchers().evict_idle(fd);
  return kind_ == StreamKind::kTcp ? uv_tcp_open(&handle_.tcp, fd)
                                   : uv_pipe_open(&handle_.pipe, fd);
}

int StreamListener::listen(int backlog) {
  return uv_listen(stream(), backlog, on_connection);
}

int StreamListener::accept(StreamTransport* transport) {
  const int err = uv_accept(stream(), transport->stream());
  if (err == 0) loop_->fd_watchers().evict_idle(transport->fileno());
  if (err == 0 && kind_ == StreamKind::kTcp) {
    // asyncio sets TCP_NODELAY on every TCP transport (base_events._set_nodelay).
    uv_tcp_nodelay(reinterpret_cast<uv_tcp_t*>(transport->stream()), 1);
  }
  return err;
}

void StreamListener::on_connection(uv_stream_t* server, int status) noexcept {
  auto* self = static_cast<StreamListener*>(server->data);
  GilFromLibuv gil(self->loop_);
  PyObject* r = nullptr;
  if (status < 0) {
    // libuv has already dealt with EMFILE (it accepts and drops the
    // connection on a reserved fd), so the loop does not spin.
    set_uv_error(status);
    Ref exc(take_exception());
    r = PyObject_CallMethod(self->self_ref_, "_on_accept_error", "O", exc.get());
  } else {
    r = PyObject_CallMethod(self->self_ref_, "_on_connection", nullptr);
  }
  if (r == nullptr) {
    // _on_connection reports its own errors; what reaches here is
    // SystemExit/KeyboardInterrupt or a bug in it: leave the loop with it.
    self->loop_->defer_exception(take_exception());
    return;
  }
  Py_DECREF(r);
}

void StreamListener::close() noexcept {
  if (!open_) return;
  open_ = false;
  loop_->remove_resource(this);
  // Ownership passes to libuv until on_close releases the Python object.
  uv_close(reinterpret_cast<uv_handle_t*>(&handle_), on_close);
}

void StreamListener::on_close(uv_handle_t* h) noexcept {
  auto* self = static_cast<StreamListener*>(h->data);
  GilFromLibuv gil(self->loop_);
  PyObject* me = std::exchange(self->self_ref_, nullptr);
  Py_XDECREF(me);  // may destroy this listener
}

}  // namespace fastloop
