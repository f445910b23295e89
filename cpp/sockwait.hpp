// The wait of loop.sock_recv & co. when their syscall would block: a native
// callable, registered as the fd's reader (or writer) handle, that retries the
// socket method each time the fd is ready and resolves the operation's future
// with its result or exception. Once the future is resolved it unregisters
// itself. Python's add_reader/remove_reader wrappers and a Python callback
// frame per readiness are thus out of the hot path of sock_recv.
#pragma once

#include "handles.hpp"
#include "poll.hpp"
#include "pyutil.hpp"

namespace fastloop {

class Loop;

bool init_sock_wait_type(PyObject* module) noexcept;

// Creates the future and registers the wait of `sock.<method>(*args)` on fd.
// Returns the future (new reference) or nullptr with an exception set.
PyObject* start_sock_wait(PyObject* py_loop, Loop* loop, int fd, Interest what, PyObject* sock,
                          PyObject* method, PyObject* const* args, Py_ssize_t nargs) noexcept;

// The awaiting task gave up (cancelled): unregister the wait of `future` on
// fd if it is still the fd's handle. Returns whether it was.
bool cancel_sock_wait(Loop* loop, int fd, Interest what, PyObject* future) noexcept;

}  // namespace fastloop
