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
//
// The executable is looked for as Popen's child looks for it, and only in
// children: the parent makes no filesystem look-up. Each path of exec_list
// (Popen's executable_list: the name itself when it holds a '/', else the
// name joined to each entry of the PATH to search) is exec'd in turn until
// one runs. When exec_list is what glibc's posix_spawnp would search (the
// PATH to search is this process's own), one posix_spawnp does it in one
// child. Otherwise, and when posix_spawnp fails (glibc's search stops at
// errors Popen's goes past, such as ENOEXEC, and reports by other rules), the
// paths are tried one posix_spawn each: every path that fails costs a child
// of its own (a clone and an exit, ~0.2 ms on a small VM), where Popen's one
// child would try them all. With none run, the error is Popen's: the first
// one other than ENOENT and ENOTDIR, else the last; one more child then tells
// a failed exec from a failed set-up (spawn.cpp, setup_error).
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace fastloop {

struct SpawnRequest {
  std::string file;                    // the executable as named (Popen: executable or args[0])
  std::vector<std::string> exec_list;  // the paths to exec, in order (see above)
  std::vector<std::string> argv;
  std::optional<std::vector<std::string>> env;  // "NAME=value" entries; none: this environ
  std::optional<std::string> cwd;               // none: the parent's
  int stdio[3] = {-1, -1, -1};  // the child's fds 0-2 copy these; -1: inherited, < -1: EBADF
  std::vector<int> pass_fds;    // sorted, unique, all >= 0
  bool close_fds = true;
  bool new_session = false;
  pid_t process_group = -1;  // >= 0: setpgid(0, process_group)
  bool restore_signals = true;
};

// Where a spawn failed, which decides what Popen's OSError names (the
// program, cwd or nothing, by Python version): the exec; chdir(cwd); another
// step of the set-up, in the child (an fd, the process group); a set-up
// refused here, before any child. The order is the binding's (_spawn's
// error_names).
enum class SpawnStage : unsigned char { kExec, kChdir, kSetupInChild, kSetupHere };

struct SpawnResult {
  pid_t pid = -1;  // the child's, when error is 0
  int error = 0;   // errno of the failure
  SpawnStage stage = SpawnStage::kExec;
};

SpawnResult spawn(const SpawnRequest& req);

}  // namespace fastloop
