// The wait of loop.sock_recv & co. when their syscall would block: a native
// callable, registered as the fd's reader (or writer) handle, that retries the
// socket method each time the fd is ready and resolves the operation's future
// with its result or exception. Once the future is resolved it unregisters
// itself. Python's add_reader/remove_reader wrappers and a Python callback
// frame per readiness are thus out of the hot path of sock_recv.
//
// Where the wait is registered: SockWaits, below, not FdWatchers. A program
// doing sock_recv/sock_sendall in a loop waits on the same fd again and
// again; through a uv_poll_t each wait would cost three epoll_ctl calls
// (libuv's start and stop both unregister the fd). SockWaits keeps a private
// epoll instance, itself watched by one uv_poll_t, where a socket stays
// registered, edge-triggered, between waits: a wait on a socket already
// registered costs no syscall. Edge-triggered, because a lingering
// registration may outlive its socket: an fd closed while another copy of
// its file is open (dup, fork) stays in an epoll set and cannot be removed
// by number any more; level-triggered it would make every poll return at
// once, edge-triggered it reports each change once and is then ignored.
#pragma once

#include <uv.h>

#include <cstdint>
#include <unordered_map>

#include "handles.hpp"
#include "owner.hpp"
#include "poll.hpp"
#include "pyutil.hpp"

namespace fastloop {

class Loop;

// The sock_* waits of one loop (see above). GIL held for every call.
class SockWaits {
 public:
  explicit SockWaits(Loop* loop) noexcept : loop_(loop) {}
  SockWaits(const SockWaits&) = delete;
  SockWaits& operator=(const SockWaits&) = delete;

  // Queues `h` (a new reference is taken) when `sock`'s fd is ready for
  // `what`, replacing (and cancelling) a previous wait's handle. False with
  // the exception set (the OSError epoll_ctl gave, e.g. EPERM for a regular
  // file).
  bool add(int fd, Interest what, PyObject* sock, HandleObject* h);
  // Stops waiting; cancels the handle. No syscall. False when no wait was
  // registered.
  bool remove(int fd, Interest what);
  HandleObject* handle(int fd, Interest what) const noexcept {
    auto it = by_fd_.find(fd);
    if (it == by_fd_.end()) return nullptr;
    return what == Interest::kRead ? it->second.reader : it->second.writer;
  }
  // Before a transport or listener takes over `fd`: unregister it and cancel
  // its waits.
  void evict(int fd);
  // In the child of a fork, once the loop has detached from the parent's
  // libuv state: the epoll instance is shared with the parent, so the
  // pending waits move to a new one.
  void reset_after_fork() noexcept;
  // The poller's callback: queue the handles of the fds that became ready.
  void drain() noexcept;
  // Loop close: cancel every handle, close the epoll instance.
  void close_all();
  int traverse(visitproc visit, void* arg) const;

 private:
  struct Entry {
    HandleObject* reader = nullptr;
    HandleObject* writer = nullptr;
    // A weak reference to the socket object whose fd is registered, or
    // nullptr when none is (or the socket takes no weak references). The fd
    // number alone cannot tell: it may have been closed and reused.
    PyObject* registered = nullptr;
    uint32_t events = 0;    // the epoll events registered
    uint8_t idle_hits = 0;  // events in a row that found no wait
  };
  class Poller;  // the uv_poll_t watching the epoll instance

  bool ensure_poller();
  bool register_fd(int fd, Entry& e, PyObject* sock, uint32_t events);
  void update_ref() noexcept;
  static void forget(Entry& e) noexcept;

  Loop* loop_;
  Poller* poller_ = nullptr;
  std::unordered_map<int, Entry> by_fd_;
  size_t waiting_ = 0;  // registered handles: the poller keeps the loop alive only then
};

bool init_sock_wait_type(PyObject* module) noexcept;

// The first try of sock_recv(sock, n) (into=false) or sock_recv_into(sock,
// buf): sock.recv(n) / sock.recv_into(buf), returning the result, or None
// when it would block (BlockingIOError, InterruptedError: the caller waits).
// For a socket.socket whose recv/recv_into is the socket module's own and
// whose timeout is 0, the recv(2) call is made here: a would-block then
// raises no exception (making BlockingIOError costs more than the rest of
// the try). Any other object gets its method called.
PyObject* sock_recv_now(PyObject* sock, PyObject* arg, bool into) noexcept;

// Creates the future and registers the wait of `sock.<method>(*args)` on fd.
// Returns the future (new reference) or nullptr with an exception set.
PyObject* start_sock_wait(PyObject* py_loop, Loop* loop, int fd, Interest what, PyObject* sock,
                          PyObject* method, PyObject* const* args, Py_ssize_t nargs) noexcept;

// The awaiting task gave up (cancelled): unregister the wait of `future` on
// fd if it is still the fd's handle. Returns whether it was.
bool cancel_sock_wait(Loop* loop, int fd, Interest what, PyObject* future) noexcept;

}  // namespace fastloop
