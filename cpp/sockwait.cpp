#include "sockwait.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <new>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "hooks.hpp"
#include "loop.hpp"

namespace fastloop {

// ---- SockWaits: the private epoll instance -------------------------------------

class SockWaits::Poller final : public HandleOwner {
 public:
  Poller(Loop* loop, int epfd) noexcept : HandleOwner(loop, Lifetime::kSelf), epfd(epfd) {}
  bool init() noexcept {
    return init_handle(&poll, nullptr,
                       [this](uv_loop_t* l, uv_poll_t* p) { return uv_poll_init(l, p, epfd); });
  }
  uv_poll_t poll{};
  const int epfd;

 private:
  ~Poller() override { close(epfd); }
  friend class SockWaits;
};

namespace {

// Events in a row that find no wait on a registered fd before it is
// unregistered: a socket the program stopped waiting on (it reads it some
// other way now, or dropped it) should not wake the loop for ever, but one
// that is read at once, without waiting, now and then should stay registered.
constexpr uint8_t kIdleLimit = 8;

// The socket object `ref` (a weak reference) refers to is `sock`.
bool refers_to(PyObject* ref, PyObject* sock) noexcept {
  if (ref == nullptr) return false;
#if PY_VERSION_HEX >= 0x030D0000
  PyObject* target = nullptr;
  if (PyWeakref_GetRef(ref, &target) < 0) {
    PyErr_Clear();
    return false;
  }
  Py_XDECREF(target);  // only compared, never dereferenced
  return target == sock;
#else
  return PyWeakref_GET_OBJECT(ref) == sock;
#endif
}

}  // namespace

bool SockWaits::ensure_poller() {
  if (poller_ != nullptr) return true;
  const int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return false;
  }
  auto* p = new (std::nothrow) Poller(loop_, epfd);
  if (p == nullptr) {
    close(epfd);
    PyErr_NoMemory();
    return false;
  }
  if (!p->init()) {
    delete p;  // never registered: ours to free (closes epfd)
    return false;
  }
  const int err = uv_poll_start(&p->poll, UV_READABLE, [](uv_poll_t* poll, int, int) {
    Loop* loop = HandleOwner::owner_of<Poller>(poll->data)->loop();
    GilFromLibuv gil(loop);
    loop->sock_waits().drain();
  });
  if (err < 0) {
    p->close_handle();  // the close callback frees it
    set_uv_error(err);
    return false;
  }
  poller_ = p;
  uv_unref(reinterpret_cast<uv_handle_t*>(&p->poll));  // no wait yet
  return true;
}

void SockWaits::update_ref() noexcept {
  if (poller_ == nullptr || !poller_->handle_open()) return;
  auto* h = reinterpret_cast<uv_handle_t*>(&poller_->poll);
  if (waiting_ > 0) {
    uv_ref(h);
  } else {
    uv_unref(h);
  }
}

bool SockWaits::register_fd(int fd, Entry& e, PyObject* sock, uint32_t events) {
  if (!ensure_poller()) return false;
  epoll_event ev{};
  ev.events = events | EPOLLET;
  ev.data.fd = fd;
  const bool known = refers_to(e.registered, sock);
  // A socket not known to be registered is added; EEXIST means its file is
  // already there under this number (another socket object on the same fd).
  int rc = epoll_ctl(poller_->epfd, known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
  if (rc < 0 && !known && errno == EEXIST) {
    rc = epoll_ctl(poller_->epfd, EPOLL_CTL_MOD, fd, &ev);
  }
  if (rc < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    return false;
  }
  if (!known) {
    PyObject* ref = PyWeakref_NewRef(sock, nullptr);
    if (ref == nullptr) PyErr_Clear();  // no weak references: re-add at each wait
    Py_XSETREF(e.registered, ref);
  }
  e.events = events;
  e.idle_hits = 0;
  return true;
}

bool SockWaits::add(int fd, Interest what, PyObject* sock, HandleObject* h) {
  loop_->detach_from_parent();  // a forked child needs its own epoll first
  Entry& e = by_fd_[fd];
  const uint32_t want = what == Interest::kRead ? EPOLLIN : EPOLLOUT;
  if ((e.events & want) == 0 || !refers_to(e.registered, sock)) {
    if (!register_fd(fd, e, sock, e.events | want)) {
      if (e.reader == nullptr && e.writer == nullptr && e.registered == nullptr) by_fd_.erase(fd);
      return false;
    }
  }
  HandleObject*& slot = what == Interest::kRead ? e.reader : e.writer;
  HandleObject* old = std::exchange(slot, reinterpret_cast<HandleObject*>(Py_NewRef(h)));
  if (old == nullptr) {
    ++waiting_;
    update_ref();
  } else {
    // Released last: cancelling may run Python code that waits again.
    cancel_handle(old);
    Py_DECREF(old);
  }
  return true;
}

bool SockWaits::remove(int fd, Interest what) {
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return false;
  HandleObject*& slot = what == Interest::kRead ? it->second.reader : it->second.writer;
  HandleObject* old = std::exchange(slot, nullptr);
  if (old == nullptr) return false;
  --waiting_;
  update_ref();
  cancel_handle(old);
  Py_DECREF(old);
  return true;
}

void SockWaits::forget(Entry& e) noexcept {
  Py_CLEAR(e.registered);
  e.events = 0;
  e.idle_hits = 0;
}

void SockWaits::evict(int fd) {
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return;
  Entry e = it->second;
  by_fd_.erase(it);
  if (e.registered != nullptr && poller_ != nullptr && poller_->handle_open()) {
    epoll_event ev{};
    epoll_ctl(poller_->epfd, EPOLL_CTL_DEL, fd, &ev);  // ENOENT/EBADF: nothing to undo
  }
  forget(e);
  for (HandleObject* h : {e.reader, e.writer}) {
    if (h == nullptr) continue;
    --waiting_;
    cancel_handle(h);
    Py_DECREF(h);
  }
  update_ref();
}

void SockWaits::drain() noexcept {
  if (poller_ == nullptr || !poller_->handle_open()) return;
  constexpr int kBatch = 64;
  epoll_event events[kBatch];
  for (;;) {
    const int n = epoll_wait(poller_->epfd, events, kBatch, 0);
    if (n < 0 && errno == EINTR) continue;
    for (int i = 0; i < n; ++i) {
      auto it = by_fd_.find(events[i].data.fd);
      if (it == by_fd_.end()) continue;  // evicted, or a closed file's last edge
      Entry& e = it->second;
      const uint32_t ev = events[i].events;
      bool waited = false;
      if ((ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0 && e.reader != nullptr) {
        loop_->push_ready_now(e.reader);
        waited = true;
      }
      if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) != 0 && e.writer != nullptr) {
        loop_->push_ready_now(e.writer);
        waited = true;
      }
      if (waited) {
        e.idle_hits = 0;
      } else if (e.registered != nullptr && ++e.idle_hits >= kIdleLimit) {
        epoll_event unused{};
        epoll_ctl(poller_->epfd, EPOLL_CTL_DEL, it->first, &unused);
        forget(e);
      }
    }
    if (n < kBatch) return;
  }
}

void SockWaits::reset_after_fork() noexcept {
  if (poller_ == nullptr) return;
  poller_->close_handle();  // closes this process's copy of the epoll fd only
  poller_ = nullptr;
  for (auto& [fd, e] : by_fd_) {
    forget(e);
    uint32_t events = 0;
    if (e.reader != nullptr) events |= EPOLLIN;
    if (e.writer != nullptr) events |= EPOLLOUT;
    if (events == 0 || !ensure_poller()) continue;
    epoll_event ev{};
    ev.events = events | EPOLLET;
    ev.data.fd = fd;
    if (epoll_ctl(poller_->epfd, EPOLL_CTL_ADD, fd, &ev) == 0) e.events = events;
  }
  PyErr_Clear();
  update_ref();
}

void SockWaits::close_all() {
  std::vector<HandleObject*> released;
  for (auto& [fd, e] : by_fd_) {
    forget(e);
    if (e.reader != nullptr) released.push_back(e.reader);
    if (e.writer != nullptr) released.push_back(e.writer);
  }
  by_fd_.clear();
  waiting_ = 0;
  if (poller_ != nullptr) {
    poller_->close_handle();  // the close callback frees it and closes the epoll fd
    poller_ = nullptr;
  }
  for (HandleObject* h : released) {
    cancel_handle(h);
    Py_DECREF(h);
  }
}

int SockWaits::traverse(visitproc visit, void* arg) const {
  for (const auto& [fd, e] : by_fd_) {
    if (e.reader != nullptr) Py_VISIT(e.reader);
    if (e.writer != nullptr) Py_VISIT(e.writer);
  }
  return 0;
}

// ---- the first try of sock_recv / sock_recv_into --------------------------------

namespace {

// _socket.socket's own recv and recv_into (borrowed from its type dict, which
// lives as long as the process).
PyObject* g_socket_recv = nullptr;
PyObject* g_socket_recv_into = nullptr;

bool init_socket_methods() noexcept {
  Ref module(PyImport_ImportModule("_socket"));
  if (!module) return false;
  Ref type(PyObject_GetAttrString(module.get(), "socket"));
  if (!type || !PyType_Check(type.get())) return false;
  auto* t = reinterpret_cast<PyTypeObject*>(type.get());
  g_socket_recv = _PyType_Lookup(t, g_str.recv);
  g_socket_recv_into = _PyType_Lookup(t, g_str.recv_into);
  if (g_socket_recv == nullptr || g_socket_recv_into == nullptr) {
    PyErr_SetString(PyExc_ImportError, "_socket.socket has no recv/recv_into");
    return false;
  }
  return true;
}

// The would-block exceptions asyncio's sock_* retry on.
bool clear_if_would_block() noexcept {
  if (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
      PyErr_ExceptionMatches(PyExc_InterruptedError)) {
    PyErr_Clear();
    return true;
  }
  return false;
}

// The fd of a socket.socket in non-blocking mode (timeout 0), or -1 when the
// recv(2) call is not ours to make (any error is cleared: the socket method
// then runs and raises its own).
int nonblocking_fd(PyObject* sock) noexcept {
  Ref timeout(PyObject_CallMethodNoArgs(sock, g_str.gettimeout));
  if (!timeout || !PyFloat_CheckExact(timeout.get()) || PyFloat_AS_DOUBLE(timeout.get()) != 0.0) {
    PyErr_Clear();
    return -1;
  }
  Ref fileno(PyObject_CallMethodNoArgs(sock, g_str.fileno));
  const long fd = fileno && PyLong_CheckExact(fileno.get()) ? PyLong_AsLong(fileno.get()) : -1;
  if (fd < 0 || fd > INT_MAX) {
    PyErr_Clear();
    return -1;
  }
  return static_cast<int>(fd);
}

// recv(2) on fd into [data, data + size): bytes received, 0 at end of
// stream, -1 when it would block, -2 with OSError set.
ssize_t recv_once(int fd, char* data, size_t size) noexcept {
  for (;;) {
    const ssize_t n = recv(fd, data, size, 0);
    if (n >= 0) return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
    if (errno != EINTR) {
      PyErr_SetFromErrno(PyExc_OSError);
      return -2;
    }
    if (PyErr_CheckSignals() < 0) return -2;  // PEP 475: retried unless a handler raised
  }
}

// nullptr without an exception when the socket method is to be called
// instead: for no room at all (it answers b'' and 0 without asking the
// kernel, which may refuse a recv of 0 bytes: ENOTCONN on a listening socket).
PyObject* recv_native(int fd, PyObject* arg) noexcept {
  const Py_ssize_t size = PyLong_AsSsize_t(arg);
  if (size == -1 && PyErr_Occurred()) return nullptr;
  if (size == 0) return nullptr;
  Ref bytes(PyBytes_FromStringAndSize(nullptr, size));
  if (!bytes) return nullptr;
  const ssize_t n = recv_once(fd, PyBytes_AS_STRING(bytes.get()), static_cast<size_t>(size));
  if (n == -1) Py_RETURN_NONE;
  if (n < 0) return nullptr;
  if (n != size) {
    PyObject* raw = bytes.release();
    if (_PyBytes_Resize(&raw, n) < 0) return nullptr;
    return raw;
  }
  return bytes.release();
}

// nullptr without an exception when `buffer` is not a writable buffer (the
// method's own error is then raised) or has no room (see recv_native).
PyObject* recv_into_native(int fd, PyObject* buffer) noexcept {
  Py_buffer view;
  if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0) {
    PyErr_Clear();
    return nullptr;
  }
  if (view.len == 0) {
    PyBuffer_Release(&view);
    return nullptr;
  }
  const ssize_t n = recv_once(fd, static_cast<char*>(view.buf), static_cast<size_t>(view.len));
  PyBuffer_Release(&view);
  if (n == -1) Py_RETURN_NONE;
  if (n < 0) return nullptr;
  return PyLong_FromSsize_t(n);
}

}  // namespace

PyObject* sock_recv_now(PyObject* sock, PyObject* arg, bool into) noexcept {
  PyObject* name = into ? g_str.recv_into : g_str.recv;
  // Only the socket module's own method, on a size it would accept (a
  // negative or odd one gets the method's own error).
  if (_PyType_Lookup(Py_TYPE(sock), name) == (into ? g_socket_recv_into : g_socket_recv) &&
      (into || (PyLong_CheckExact(arg) && PyLong_AsLong(arg) >= 0))) {
    const int fd = nonblocking_fd(sock);
    if (fd >= 0) {
      PyObject* result = into ? recv_into_native(fd, arg) : recv_native(fd, arg);
      if (result != nullptr || PyErr_Occurred()) return result;
    }
  }
  PyErr_Clear();  // a size too large for a long: the method says so
  Ref result(PyObject_CallMethodOneArg(sock, name, arg));
  if (!result && clear_if_would_block()) Py_RETURN_NONE;
  return result.release();
}

// ---- the wait object -------------------------------------------------------------

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
  SockWaits& waits = w->loop->sock_waits();
  HandleObject* h = waits.handle(w->fd, w->what);
  if (h == nullptr || h->callback == nullptr || !Py_IS_TYPE(h->callback, &SockWaitType)) {
    return false;
  }
  auto* current = reinterpret_cast<SockWaitObject*>(h->callback);
  if (current->future != future) return false;
  waits.remove(w->fd, w->what);
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

PyObject* sock_recv_now_py(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_SetString(PyExc_TypeError, "sock_recv_now(sock, n_or_buffer, into)");
    return nullptr;
  }
  return sock_recv_now(args[0], args[1], args[2] == Py_True);
}

PyMethodDef kSockRecvNowDef = {
    "sock_recv_now", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sock_recv_now_py)),
    METH_FASTCALL,
    "sock_recv_now($module, sock, n_or_buffer, into, /)\n--\n\n"
    "sock.recv(n) (into False) or sock.recv_into(buffer) once; None when it would block."};

}  // namespace

bool init_sock_wait_type(PyObject* module) noexcept {
  if (!init_socket_methods()) return false;
  Ref fn(PyCFunction_NewEx(&kSockRecvNowDef, nullptr, nullptr));
  if (!fn || PyModule_AddObjectRef(module, "sock_recv_now", fn.get()) < 0) return false;
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
  // A reader (writer) the program added on this fd is replaced, as
  // asyncio's sock_* replace it with their own.
  if (loop->fd_watchers().handle(fd, what) != nullptr) loop->fd_watchers().remove(fd, what);
  if (!loop->sock_waits().add(fd, what, sock, reinterpret_cast<HandleObject*>(handle.get()))) {
    return nullptr;
  }
  return future.release();
}

bool cancel_sock_wait(Loop* loop, int fd, Interest what, PyObject* future) noexcept {
  HandleObject* h = loop->sock_waits().handle(fd, what);
  if (h == nullptr || h->callback == nullptr || !Py_IS_TYPE(h->callback, &SockWaitType)) {
    return false;
  }
  auto* w = reinterpret_cast<SockWaitObject*>(h->callback);
  if (w->future != future) return false;
  loop->sock_waits().remove(fd, what);
  return true;
}

}  // namespace fastloop
