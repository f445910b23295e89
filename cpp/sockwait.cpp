#include "sockwait.hpp"

#include "errors.hpp"
#include "hooks.hpp"
#include "loop.hpp"

namespace fastloop {

namespace {

struct SockWaitObject {
  PyObject_HEAD vectorcallfunc vectorcall;
  PyObject* future;
  PyObject* sock;
  PyObject* method;  // the socket method's name, looked up on each retry as
                     // asyncio does (a test may patch it meanwhile)
  PyObject* args;    // its arguments (a tuple)
  Loop* loop;        // valid while registered: the handle holds the loop
  int fd;
  Interest what;
};

PyTypeObject SockWaitType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// Unregisters `w` if it is still the fd's handle (a later add_reader may
// have replaced it).
bool unregister(SockWaitObject* w, PyObject* future) noexcept {
  FdWatchers& watchers = w->loop->fd_watchers();
  HandleObject* h = watchers.handle(w->fd, w->what);
  if (h == nullptr || h->callback == nullptr || !Py_IS_TYPE(h->callback, &SockWaitType)) {
    return false;
  }
  auto* current = reinterpret_cast<SockWaitObject*>(h->callback);
  if (current->future != future) return false;
  watchers.remove(w->fd, w->what);
  return true;
}

// The fd is ready: retry the socket method, as _sockets._retry_ready does.
PyObject* sock_wait_call(PyObject* self, PyObject* const* /*args*/, size_t /*nargsf*/,
                         PyObject* /*kwnames*/) {
  auto* w = reinterpret_cast<SockWaitObject*>(self);
  Ref keep = Ref::borrow(self);  // unregistering releases the handle's reference
  Ref done(PyObject_CallMethodNoArgs(w->future, g_str.done));
  if (!done) return nullptr;
  if (done.get() == Py_True) {  // cancelled meanwhile
    unregister(w, w->future);
    Py_RETURN_NONE;
  }
  Ref syscall(PyObject_GetAttr(w->sock, w->method));
  Ref result(syscall ? PyObject_Call(syscall.get(), w->args, nullptr) : nullptr);
  if (!result) {
    if (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
        PyErr_ExceptionMatches(PyExc_InterruptedError)) {
      PyErr_Clear();  // would block again: keep waiting
      Py_RETURN_NONE;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
        PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
      return nullptr;
    }
    Ref exc(take_exception());
    result = Ref(PyObject_CallMethodOneArg(w->future, g_str.set_exception, exc.get()));
  } else {
    // One argument, whatever it is (a tuple from recvfrom is not unpacked).
    result = Ref(PyObject_CallMethodOneArg(w->future, g_str.set_result, result.get()));
  }
  unregister(w, w->future);
  if (!result) return nullptr;
  Py_RETURN_NONE;
}

PyObject* sock_wait_tp_call(PyObject* self, PyObject* /*args*/, PyObject* /*kwargs*/) {
  return sock_wait_call(self, nullptr, 0, nullptr);
}

int sock_wait_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* w = reinterpret_cast<SockWaitObject*>(self);
  Py_VISIT(w->future);
  Py_VISIT(w->sock);
  Py_VISIT(w->method);
  Py_VISIT(w->args);
  return 0;
}

int sock_wait_clear(PyObject* self) {
  auto* w = reinterpret_cast<SockWaitObject*>(self);
  Py_CLEAR(w->future);
  Py_CLEAR(w->sock);
  Py_CLEAR(w->method);
  Py_CLEAR(w->args);
  return 0;
}

void sock_wait_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  sock_wait_clear(self);
  PyObject_GC_Del(self);
}

}  // namespace

bool init_sock_wait_type(PyObject* /*module*/) noexcept {
  SockWaitType.tp_name = "fastloop._core.SockWait";
  SockWaitType.tp_doc = "The native wait of a loop.sock_* operation (internal).";
  SockWaitType.tp_basicsize = sizeof(SockWaitObject);
  SockWaitType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL;
  SockWaitType.tp_vectorcall_offset = offsetof(SockWaitObject, vectorcall);
  SockWaitType.tp_call = sock_wait_tp_call;
  SockWaitType.tp_dealloc = sock_wait_dealloc;
  SockWaitType.tp_traverse = sock_wait_traverse;
  SockWaitType.tp_clear = sock_wait_clear;
  return PyType_Ready(&SockWaitType) == 0;
}

PyObject* start_sock_wait(PyObject* py_loop, Loop* loop, int fd, Interest what, PyObject* sock,
                          PyObject* method, PyObject* const* args, Py_ssize_t nargs) noexcept {
  if (!PyUnicode_Check(method)) {
    PyErr_SetString(PyExc_TypeError, "the socket method is named by a str");
    return nullptr;
  }
  if (!loop->check_open()) return nullptr;
  PyObject* stack[1] = {py_loop};
  Ref future(PyObject_Vectorcall(g_hooks.future_type, stack, 0, g_str.kw_loop));
  if (!future) return nullptr;
  Ref arg_tuple(PyTuple_New(nargs));
  if (!arg_tuple) return nullptr;
  for (Py_ssize_t i = 0; i < nargs; ++i) {
    PyTuple_SET_ITEM(arg_tuple.get(), i, Py_NewRef(args[i]));
  }
  auto* w = PyObject_GC_New(SockWaitObject, &SockWaitType);
  if (w == nullptr) return nullptr;
  w->vectorcall = sock_wait_call;
  w->future = Py_NewRef(future.get());
  w->sock = Py_NewRef(sock);
  w->method = Py_NewRef(method);
  w->args = arg_tuple.release();
  w->loop = loop;
  w->fd = fd;
  w->what = what;
  PyObject_GC_Track(w);
  Ref wait(reinterpret_cast<PyObject*>(w));
  Ref handle(
      reinterpret_cast<PyObject*>(new_handle(py_loop, loop, wait.get(), nullptr, 0, nullptr)));
  if (!handle) return nullptr;
  if (!loop->fd_watchers().add(fd, what, reinterpret_cast<HandleObject*>(handle.get()))) {
    return nullptr;
  }
  return future.release();
}

bool cancel_sock_wait(Loop* loop, int fd, Interest what, PyObject* future) noexcept {
  HandleObject* h = loop->fd_watchers().handle(fd, what);
  if (h == nullptr || h->callback == nullptr || !Py_IS_TYPE(h->callback, &SockWaitType)) {
    return false;
  }
  auto* w = reinterpret_cast<SockWaitObject*>(h->callback);
  if (w->future != future) return false;
  loop->fd_watchers().remove(fd, what);
  return true;
}

}  // namespace fastloop
