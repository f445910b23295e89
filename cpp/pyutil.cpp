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
  g_str.data_received = PyUnicode_InternFromString("data_received");
  g_str.datagram_received = PyUnicode_InternFromString("datagram_received");
  g_str.error_received = PyUnicode_InternFromString("error_received");
  g_str.get_buffer = PyUnicode_InternFromString("get_buffer");
  g_str.buffer_updated = PyUnicode_InternFromString("buffer_updated");
  g_str.eof_received = PyUnicode_InternFromString("eof_received");
  g_str.connection_lost = PyUnicode_InternFromString("connection_lost");
  g_str.pause_writing = PyUnicode_InternFromString("pause_writing");
  g_str.resume_writing = PyUnicode_InternFromString("resume_writing");
  g_str.call_connection_lost = PyUnicode_InternFromString("_call_connection_lost");
  g_str.detach = PyUnicode_InternFromString("detach");
  g_str.on_connection = PyUnicode_InternFromString("_on_connection");
  g_str.on_accept_error = PyUnicode_InternFromString("_on_accept_error");
  g_str.run = PyUnicode_InternFromString("run");
  g_str.read_ready = PyUnicode_InternFromString("_read_ready");
  g_str.sendto_ready = PyUnicode_InternFromString("_sendto_ready");
  g_str.recvfrom = PyUnicode_InternFromString("recvfrom");
  g_str.send = PyUnicode_InternFromString("send");
  g_str.sendto = PyUnicode_InternFromString("sendto");
  g_str.native = PyUnicode_InternFromString("_native");
  g_str.recv = PyUnicode_InternFromString("recv");
  g_str.recv_into = PyUnicode_InternFromString("recv_into");
  g_str.gettimeout = PyUnicode_InternFromString("gettimeout");
  g_str.fileno = PyUnicode_InternFromString("fileno");
  // Every field is a PyObject*: all must have been made.
  static_assert(sizeof(Strings) % sizeof(PyObject*) == 0);
  const auto* fields = reinterpret_cast<PyObject* const*>(&g_str);
  for (size_t i = 0; i < sizeof(Strings) / sizeof(PyObject*); ++i) {
    if (fields[i] == nullptr) return false;
  }
  return true;
}

}  // namespace fastloop
