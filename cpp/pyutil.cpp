#include "pyutil.hpp"

#include "debug.hpp"
#include "hooks.hpp"

namespace fastloop {

Strings g_str{};
Hooks g_hooks{};
DebugCounters g_debug_counters{};

bool init_strings() noexcept {
  g_str.context = PyUnicode_InternFromString("context");
  g_str.loop = PyUnicode_InternFromString("loop");
  g_str.name = PyUnicode_InternFromString("name");
  g_str.done = PyUnicode_InternFromString("done");
  g_str.set_result = PyUnicode_InternFromString("set_result");
  g_str.set_exception = PyUnicode_InternFromString("set_exception");
  g_str.slow_callback_duration = PyUnicode_InternFromString("slow_callback_duration");
  g_str.kw_loop = Py_BuildValue("(O)", g_str.loop);
  g_str.kw_loop_name_ctx = Py_BuildValue("(OOO)", g_str.loop, g_str.name, g_str.context);
  g_str.send_raised = PyUnicode_InternFromString("socket.send() raised exception.");
  return g_str.send_raised != nullptr && g_str.context != nullptr && g_str.loop != nullptr &&
         g_str.name != nullptr && g_str.done != nullptr && g_str.set_result != nullptr &&
         g_str.set_exception != nullptr && g_str.slow_callback_duration != nullptr &&
         g_str.kw_loop != nullptr && g_str.kw_loop_name_ctx != nullptr;
}

}  // namespace fastloop
