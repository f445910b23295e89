// Binds the native spawn (cpp/spawn.hpp) as _core._spawn, which
// fastloop/_subprocess.py calls the way subprocess.Popen calls _fork_exec:
// the arguments are converted, and refused, as _fork_exec converts them, and
// a failure raises the OSError Popen raises.
#include "spawn.hpp"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <optional>
#include <string>
#include <vector>

#include "registry.hpp"

namespace py = pybind11;

namespace fastloop {

namespace {

[[noreturn]] void raise(PyObject* type, const char* message) {
  PyErr_SetString(type, message);
  throw py::error_already_set();
}

// A str, bytes or os.PathLike as the bytes exec takes (PyUnicode_FSConverter:
// TypeError for other types, ValueError for an embedded NUL).
std::string fs_bytes(py::handle obj) {
  PyObject* bytes = nullptr;
  if (PyUnicode_FSConverter(obj.ptr(), &bytes) == 0) throw py::error_already_set();
  std::string out(PyBytes_AS_STRING(bytes), static_cast<size_t>(PyBytes_GET_SIZE(bytes)));
  Py_DECREF(bytes);
  return out;
}

std::vector<std::string> fs_bytes_list(const py::sequence& items) {
  std::vector<std::string> out;
  out.reserve(items.size());
  for (py::handle item : items) out.push_back(fs_bytes(item));
  return out;
}

// Bytes already encoded (the environment, the exec paths): only a NUL is refused.
std::vector<std::string> bytes_list(const py::sequence& items) {
  std::vector<std::string> out;
  out.reserve(items.size());
  for (py::handle item : items) {
    auto s = py::cast<std::string>(item);
    if (s.find('\0') != std::string::npos) raise(PyExc_ValueError, "embedded null byte");
    out.push_back(std::move(s));
  }
  return out;
}

// A C int as this Python's _fork_exec takes its fds and the process group:
// TypeError for a non-integer, OverflowError out of range, with the messages
// of PyArg_Parse's "i" format (3.11) or of Argument Clinic's int (3.12+).
int c_int(py::handle obj) {
#if PY_VERSION_HEX >= 0x030D0000
  const int value = PyLong_AsInt(obj.ptr());
  if (value == -1 && PyErr_Occurred() != nullptr) throw py::error_already_set();
  return value;
#elif PY_VERSION_HEX >= 0x030C0000
  const int value = _PyLong_AsInt(obj.ptr());
  if (value == -1 && PyErr_Occurred() != nullptr) throw py::error_already_set();
  return value;
#else
  const long value = PyLong_AsLong(obj.ptr());
  if (value == -1 && PyErr_Occurred() != nullptr) throw py::error_already_set();
  if (value > INT_MAX) raise(PyExc_OverflowError, "signed integer is greater than maximum");
  if (value < INT_MIN) raise(PyExc_OverflowError, "signed integer is less than minimum");
  return static_cast<int>(value);
#endif
}

// pass_fds, sorted by the caller: ints in [0, INT_MAX], each above the one
// before, or ValueError as _fork_exec raises for its fds_to_keep.
std::vector<int> fds_to_keep(const py::sequence& fds) {
  std::vector<int> out;
  long previous = -1;
  for (py::handle item : fds) {
    if (!PyLong_Check(item.ptr())) raise(PyExc_ValueError, "bad value(s) in fds_to_keep");
    const long fd = PyLong_AsLong(item.ptr());
    if (fd == -1 && PyErr_Occurred() != nullptr) PyErr_Clear();  // too large: refused below
    if (fd < 0 || fd <= previous || fd > INT_MAX) {
      raise(PyExc_ValueError, "bad value(s) in fds_to_keep");
    }
    out.push_back(static_cast<int>(fd));
    previous = fd;
  }
  return out;
}

}  // namespace

void register_spawn(py::module_& m) {
  m.def(
      "_spawn",
      [](const py::object& executable, const py::sequence& exec_list, const py::sequence& args,
         const std::optional<py::sequence>& env, const py::object& cwd, const py::sequence& stdio,
         const py::sequence& pass_fds, bool close_fds, bool new_session,
         const py::object& process_group, bool restore_signals, const py::tuple& error_names) {
        SpawnRequest req;
        if (error_names.size() != 4) throw py::value_error("error_names: four names expected");
        if (stdio.size() != 3) throw py::value_error("stdio: three fds expected");
        for (size_t i = 0; i < 3; ++i) req.stdio[i] = c_int(py::object(stdio[i]));
        req.process_group = c_int(process_group);
        req.pass_fds = fds_to_keep(pass_fds);
        req.argv = fs_bytes_list(args);
        req.file = fs_bytes(executable);
        req.exec_list = bytes_list(exec_list);
        if (!cwd.is_none()) req.cwd = fs_bytes(cwd);
        if (env) req.env = bytes_list(*env);
        req.close_fds = close_fds;
        req.new_session = new_session;
        req.restore_signals = restore_signals;
        SpawnResult result;
        {
          // The spawn waits for the child's exec (vfork); req is this thread's.
          py::gil_scoped_release nogil;
          result = spawn(req);
        }
        if (result.error != 0) {
          // What Popen names depends on the stage (and the Python version).
          PyObject* name = error_names[static_cast<size_t>(result.stage)].ptr();
          errno = result.error;
          PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name == Py_None ? nullptr : name);
          throw py::error_already_set();
        }
        return result.pid;
      },
      py::arg("executable"), py::arg("exec_list"), py::arg("args"), py::arg("env"), py::arg("cwd"),
      py::arg("stdio"), py::arg("pass_fds"), py::arg("close_fds"), py::arg("new_session"),
      py::arg("process_group"), py::arg("restore_signals"), py::arg("error_names"),
      "Start a child as subprocess.Popen's _fork_exec would (see cpp/spawn.hpp): its pid, or "
      "the OSError Popen raises.");
}

}  // namespace fastloop
