// PYBIND11_MODULE(_core): the native half of fastloop.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>

#include "debug.hpp"
#include "handles.hpp"
#include "hooks.hpp"
#include "loop.hpp"
#include "registry.hpp"
#include "sockwait.hpp"
#include "spawn.hpp"

namespace py = pybind11;

namespace fastloop {

namespace {

// Refuses what exec would cut short at a NUL, as subprocess.Popen does.
void check_no_nul(const std::string& s) {
  if (s.find('\0') != std::string::npos) throw py::value_error("embedded null byte");
}

}  // namespace

void register_spawn(py::module_& m) {
  m.def(
      "_spawn",
      [](const std::string& path, const std::vector<std::string>& argv,
         const std::optional<std::vector<std::string>>& env, const std::string& cwd,
         const std::vector<int>& stdio, const std::vector<int>& pass_fds, bool close_fds,
         bool new_session, int process_group, bool restore_signals) {
        SpawnRequest req;
        req.path = path;
        req.argv = argv;
        if (env) {
          req.env = *env;
          req.has_env = true;
        }
        req.cwd = cwd;
        if (stdio.size() != 3) throw py::value_error("stdio: three fds expected");
        for (size_t i = 0; i < 3; ++i) req.stdio[i] = stdio[i];
        req.pass_fds = pass_fds;
        req.close_fds = close_fds;
        req.new_session = new_session;
        req.process_group = process_group;
        req.restore_signals = restore_signals;
        check_no_nul(req.path);
        check_no_nul(req.cwd);
        for (const std::string& s : req.argv) check_no_nul(s);
        for (const std::string& s : req.env) check_no_nul(s);
        pid_t pid = -1;
        {
          py::gil_scoped_release nogil;
          pid = spawn(req);
        }
        if (pid < 0) {
          errno = -pid;
          PyErr_SetFromErrno(PyExc_OSError);
          throw py::error_already_set();
        }
        return pid;
      },
      py::arg("path"), py::arg("argv"), py::arg("env"), py::arg("cwd"), py::arg("stdio"),
      py::arg("pass_fds"), py::arg("close_fds"), py::arg("new_session"), py::arg("process_group"),
      py::arg("restore_signals"),
      "Start a child with posix_spawn (see cpp/spawn.hpp); its pid, or OSError.");
}

void register_hooks(py::module_& m) {
  m.def(
      "_install_hooks",
      [](const py::kwargs& kwargs) {
        const std::pair<const char*, PyObject**> slots[] = {
            {"report_callback_error", &g_hooks.report_callback_error},
            {"handle_repr", &g_hooks.handle_repr},
            {"log_slow_callback", &g_hooks.log_slow_callback},
            {"extract_stack", &g_hooks.extract_stack},
            {"is_coroutine_marked", &g_hooks.is_coroutine_marked},
            {"future_type", &g_hooks.future_type},
            {"task_type", &g_hooks.task_type},
            {"partial_type", &g_hooks.partial_type},
            {"buffered_protocol_type", &g_hooks.buffered_protocol_type},
            {"transport_error", &g_hooks.transport_error},
            {"server_detach", &g_hooks.server_detach},
            {"log_warning", &g_hooks.log_warning},
        };
        for (const auto& item : kwargs) {
          const std::string name = py::str(item.first);
          PyObject** slot = nullptr;
          for (const auto& [known, where] : slots) {
            if (name == known) slot = where;
          }
          if (slot == nullptr) throw py::type_error("unknown hook " + name);
          PyObject* value = item.second.ptr();
          Py_INCREF(value);
          Py_XSETREF(*slot, value);  // hooks live as long as the module
        }
      },
      "Hand the core the Python helpers it calls on cold paths (fastloop/_loop.py).");
  m.def(
      "_debug_counters",
      []() -> py::object {
        if (!kDebugBuild) return py::none();
        py::dict d;
        d["handles"] = g_debug_counters.handles;
        d["fd_watchers"] = g_debug_counters.fd_watchers;
        d["uv_loops"] = g_debug_counters.uv_loops;
        d["uv_handles"] = g_debug_counters.uv_handles;
        return d;
      },
      "Live handles, fd watchers and libuv loops (FASTLOOP_DEBUG builds), else None.");
  m.def(
      "_debug_set_arm_delay",
      [](long microseconds) {
        if (!kDebugBuild) throw py::value_error("needs a FASTLOOP_DEBUG build");
        g_debug_counters.arm_delay_us = microseconds;
      },
      "Fault injection (FASTLOOP_DEBUG builds): sleep between arming the timer and polling.");
}

}  // namespace fastloop

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
}
