// Binds the native spawn (cpp/spawn.hpp) as _core._spawn, which
// fastloop/_subprocess.py calls the way subprocess.Popen calls _fork_exec.
#include "spawn.hpp"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "registry.hpp"

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

}  // namespace fastloop
