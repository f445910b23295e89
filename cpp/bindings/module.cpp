// PYBIND11_MODULE(_core): the native half of fastloop. Each area binds itself
// in its own file (registry.hpp); this file only calls them in order.
#include <pybind11/pybind11.h>

#include "handles.hpp"
#include "loop.hpp"
#include "pyutil.hpp"
#include "registry.hpp"
#include "sockwait.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastloop's native core: the event loop on libuv";
  if (!fastloop::init_libuv_globals() || !fastloop::init_strings() ||
      !fastloop::init_handle_types(m.ptr()) || !fastloop::init_sock_wait_type(m.ptr())) {
    throw py::error_already_set();
  }
  fastloop::register_loop(m);
  fastloop::register_hooks(m);
  fastloop::register_stream(m);
  fastloop::register_spawn(m);
  fastloop::register_udp(m);
  fastloop::register_native_method(m);
}
