// Python-level helpers the core calls on its cold paths (error reports,
// reprs, debug-mode logging) and asyncio types it constructs. They are handed
// over once by fastloop/_loop.py through _core._install_hooks().
#pragma once

#include "pyutil.hpp"

namespace fastloop {

struct Hooks {
  PyObject* report_callback_error = nullptr;   // (handle, exc) -> None
  PyObject* handle_repr = nullptr;             // (handle) -> str
  PyObject* log_slow_callback = nullptr;       // (handle, seconds) -> None
  PyObject* extract_stack = nullptr;           // () -> traceback.StackSummary
  PyObject* is_coroutine_marked = nullptr;     // (obj) -> bool, asyncio's marker check
  PyObject* future_type = nullptr;             // asyncio.Future (the C one)
  PyObject* task_type = nullptr;               // asyncio.Task (the C one)
  PyObject* partial_type = nullptr;            // functools.partial
  PyObject* buffered_protocol_type = nullptr;  // asyncio.BufferedProtocol
  PyObject* transport_error = nullptr;         // (transport, exc, message, fatal) -> None
  PyObject* server_detach = nullptr;           // (server, transport) -> None
  PyObject* log_warning = nullptr;             // (message) -> None
  PyObject* report_slow_callback = nullptr;    // (loop, handle, seconds) -> None
  PyObject* report_stall = nullptr;            // (loop, thread_id, seconds, ended) -> None
};
extern Hooks g_hooks;

}  // namespace fastloop
