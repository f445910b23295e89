// Starting a child process: posix_spawn, which glibc implements with
// clone(CLONE_VM | CLONE_VFORK). The parent's memory is not copied, so a
// spawn costs the same whatever the size of the Python process (libuv's
// uv_spawn forks, which costs a page-table copy and then a copy-on-write
// fault for every page the parent touches while the child runs).
//
// What the child gets follows subprocess.Popen (POSIX): fds 0-2 from the
// given fds, every other inheritable fd closed (close_fds) except pass_fds,
// the working directory, a new session or process group, SIGPIPE and
// SIGXFSZ back to their defaults (restore_signals).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace fastloop {

struct SpawnRequest {
  std::string path;  // the executable, already looked up in PATH
  std::vector<std::string> argv;
  std::vector<std::string> env;  // "NAME=value" entries, used when has_env
  bool has_env = false;
  std::string cwd;              // empty: the parent's
  int stdio[3] = {-1, -1, -1};  // the child's fds 0-2 are copies of these; -1: inherited
  std::vector<int> pass_fds;    // sorted, unique, all >= 3
  bool close_fds = true;
  bool new_session = false;
  pid_t process_group = -1;  // >= 0: setpgid(0, process_group)
  bool restore_signals = true;
};

// The child's pid, or an errno value negated (the exec failed, or the setup).
pid_t spawn(const SpawnRequest& req);

}  // namespace fastloop
