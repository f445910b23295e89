// Binds the hand-over of the Python helpers the core calls on cold paths
// (fastloop/_loop.py calls _install_hooks once) and the debug build's
// counters and fault injection (cpp/debug.hpp).
#include "hooks.hpp"

#include <pybind11/pybind11.h>

#include <string>
#include <utility>

#include "debug.hpp"
#include "registry.hpp"

namespace py = pybind11;

namespace fastloop {

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
            {"report_slow_callback", &g_hooks.report_slow_callback},
            {"report_stall", &g_hooks.report_stall},
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
