#include "spawn.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <spawn.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace fastloop {
namespace {

// The actions and attributes of one posix_spawn, released on every path.
class SpawnSetup {
 public:
  SpawnSetup() {
    posix_spawn_file_actions_init(&actions_);
    posix_spawnattr_init(&attr_);
  }
  ~SpawnSetup() {
    posix_spawn_file_actions_destroy(&actions_);
    posix_spawnattr_destroy(&attr_);
    for (int fd : temporary_fds_) ::close(fd);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;

  posix_spawn_file_actions_t* actions() noexcept { return &actions_; }
  posix_spawnattr_t* attr() noexcept { return &attr_; }
  // Closed when the spawn is over (the child has its own copies by then).
  void keep_until_done(int fd) { temporary_fds_.push_back(fd); }

 private:
  posix_spawn_file_actions_t actions_{};
  posix_spawnattr_t attr_{};
  std::vector<int> temporary_fds_;
};

bool inheritable(int fd) noexcept {
  const int flags = ::fcntl(fd, F_GETFD);
  return flags >= 0 && (flags & FD_CLOEXEC) == 0;
}

// Closes, in the child, the parent's inheritable fds in [from, to) (to < 0:
// no upper end); close-on-exec fds go by themselves at the exec.
int add_closes(posix_spawn_file_actions_t* actions, int from, int to) {
  if (to < 0) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
#else
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr) return errno;
    const int own = ::dirfd(dir);
    int err = 0;
    while (const dirent* entry = ::readdir(dir)) {
      const int fd = std::atoi(entry->d_name);
      if (fd >= from && fd != own && entry->d_name[0] != '.' && inheritable(fd)) {
        err = posix_spawn_file_actions_addclose(actions, fd);
        if (err != 0) break;
      }
    }
    ::closedir(dir);
    return err;
#endif
  }
  for (int fd = from; fd < to; ++fd) {
    if (!inheritable(fd)) continue;
    const int err = posix_spawn_file_actions_addclose(actions, fd);
    if (err != 0) return err;
  }
  return 0;
}

// The child's fds 0-2. A source below 3 could be overwritten by an earlier
// dup2, so those are first copied above 2 in the parent.
int add_stdio(SpawnSetup& setup, const int (&stdio)[3]) {
  int sources[3] = {-1, -1, -1};
  for (int i = 0; i < 3; ++i) {
    const int fd = stdio[i];
    if (fd < 0) continue;
    sources[i] = fd;
    if (fd >= 3) continue;
    for (int j = 0; j < i; ++j) {
      if (stdio[j] == fd) sources[i] = sources[j];  // e.g. stderr=STDOUT
    }
    if (sources[i] != fd) continue;
    const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (copy < 0) return errno;
    setup.keep_until_done(copy);
    sources[i] = copy;
  }
  for (int i = 0; i < 3; ++i) {
    if (sources[i] < 0) continue;
    const int err = posix_spawn_file_actions_adddup2(setup.actions(), sources[i], i);
    if (err != 0) return err;
  }
  return 0;
}

int add_fd_actions(SpawnSetup& setup, const SpawnRequest& req) {
  int err = add_stdio(setup, req.stdio);
  if (err != 0) return err;
  int next = 3;
  for (int fd : req.pass_fds) {
    if (req.close_fds) {
      err = add_closes(setup.actions(), next, fd);
      if (err != 0) return err;
    }
    // dup2 of an fd onto itself clears its close-on-exec flag (POSIX 2024,
    // glibc >= 2.29), as Popen's child does for pass_fds.
    err = posix_spawn_file_actions_adddup2(setup.actions(), fd, fd);
    if (err != 0) return err;
    next = fd + 1;
  }
  if (req.close_fds) return add_closes(setup.actions(), next, -1);
  return 0;
}

int add_attributes(SpawnSetup& setup, const SpawnRequest& req) {
  short flags = 0;
  if (req.restore_signals) {
    sigset_t defaults;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGXFSZ);
    const int err = posix_spawnattr_setsigdefault(setup.attr(), &defaults);
    if (err != 0) return err;
    flags |= POSIX_SPAWN_SETSIGDEF;
  }
  if (req.new_session) flags |= POSIX_SPAWN_SETSID;
  if (req.process_group >= 0) {
    const int err = posix_spawnattr_setpgroup(setup.attr(), req.process_group);
    if (err != 0) return err;
    flags |= POSIX_SPAWN_SETPGROUP;
  }
  return posix_spawnattr_setflags(setup.attr(), flags);
}

std::vector<char*> c_strings(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const std::string& s : strings) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

}  // namespace

pid_t spawn(const SpawnRequest& req) {
  SpawnSetup setup;
  int err = add_fd_actions(setup, req);
  if (err == 0 && !req.cwd.empty()) {
    err = posix_spawn_file_actions_addchdir_np(setup.actions(), req.cwd.c_str());
  }
  if (err == 0) err = add_attributes(setup, req);
  if (err != 0) return -err;
  std::vector<char*> argv = c_strings(req.argv);
  std::vector<char*> env;
  if (req.has_env) env = c_strings(req.env);
  pid_t pid = -1;
  err = posix_spawn(&pid, req.path.c_str(), setup.actions(), setup.attr(), argv.data(),
                    req.has_env ? env.data() : environ);
  return err != 0 ? -err : pid;
}

}  // namespace fastloop
