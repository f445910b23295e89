#include "server.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "errors.hpp"

namespace fastloop {

StreamListener::StreamListener(PyObject* py_loop, StreamKind kind)
    : HandleOwner(core_of(py_loop), Lifetime::kPython), kind_(kind), py_loop_(Py_NewRef(py_loop)) {
  // Connections are accepted in a copy of the context current now, as
  // asyncio's accept callback copies the one current at create_server().
  if (!capture_context()) PyErr_Clear();
}

StreamListener::~StreamListener() {
  Py_CLEAR(py_loop_);
}

int StreamListener::traverse(visitproc visit, void* arg) const {
  Py_VISIT(py_loop_);
  return traverse_base(visit, arg);
}

bool StreamListener::open(PyObject* py_self, int fd, int backlog) {
  if (!loop()->check_open()) return false;
  const int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return false;
  }
  // asyncio's _start_serving replaces a reader added on the socket before.
  loop()->fd_watchers().evict(fd);
  loop()->fd_watchers().evict(copy);
  const bool ok = kind_ == StreamKind::kTcp
                      ? init_handle(&handle_.tcp, py_self,
                                    [](uv_loop_t* l, uv_tcp_t* t) { return uv_tcp_init(l, t); })
                      : init_handle(&handle_.pipe, py_self, [](uv_loop_t* l, uv_pipe_t* p) {
                          return uv_pipe_init(l, p, 0);
                        });
  if (!ok) {
    ::close(copy);
    return false;
  }
  int err = kind_ == StreamKind::kTcp ? uv_tcp_open(&handle_.tcp, copy)
                                      : uv_pipe_open(&handle_.pipe, copy);
  if (err < 0) ::close(copy);  // libuv checks before it takes the fd
  if (err == 0) err = uv_listen(stream(), backlog, on_connection);
  if (err < 0) {
    set_uv_error(err);
    close_handle();
    return false;
  }
  return true;
}

bool StreamListener::accept(StreamTransport* transport, PyObject* py_transport) {
  // The new connection's fd number may still have a watcher from an fd the
  // program closed without remove_reader(): it goes before libuv takes the
  // number (libuv keeps one watcher per fd).
  const int fd = stream()->accepted_fd;
  if (fd >= 0) loop()->fd_watchers().evict(fd);
  if (!transport->prepare_accept(py_transport)) return false;
  const int err = uv_accept(stream(), transport->stream());
  if (err < 0) {
    set_uv_error(err);
    Ref exc(take_exception());
    transport->discard();
    restore_exception(exc.release());
    return false;
  }
  if (kind_ == StreamKind::kTcp) {
    // asyncio sets TCP_NODELAY on every TCP transport (base_events._set_nodelay).
    uv_tcp_nodelay(reinterpret_cast<uv_tcp_t*>(transport->stream()), 1);
  }
  return true;
}

void StreamListener::on_connection(uv_stream_t* server, int status) noexcept {
  auto* self = owner_of<StreamListener>(server->data);
  GilFromLibuv gil(self->loop());
  // Each connection gets a copy of the server's context, as each of
  // asyncio's accepts runs in a task of its own.
  Ref context(self->context() != nullptr ? PyContext_Copy(self->context()) : nullptr);
  if (self->context() != nullptr && !context) {
    self->loop()->defer_exception(take_exception());
    return;
  }
  CallbackScope scope(*self, context.get());
  PyObject* py_self = self->keep_alive();
  Ref r;
  if (!scope.ok() || py_self == nullptr) {
    // Nothing to call (the context could not be entered; reported below).
  } else if (status < 0) {
    // libuv has already dealt with EMFILE (it accepts and drops the
    // connection on a reserved fd), so the loop does not spin.
    set_uv_error(status);
    Ref exc(take_exception());
    PyObject* args[2] = {py_self, exc.get()};
    r = Ref(PyObject_VectorcallMethod(g_str.on_accept_error, args,
                                      2 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr));
  } else {
    r = Ref(PyObject_VectorcallMethod(g_str.on_connection, &py_self,
                                      1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr));
  }
  if (!r && PyErr_Occurred()) {
    // _on_connection reports its own errors; what reaches here is
    // SystemExit/KeyboardInterrupt or a bug in it: leave the loop with it.
    self->loop()->defer_exception(take_exception());
  }
}

}  // namespace fastloop
