#include "spawn.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <string_view>

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

// The child's fds 0-2. -1 leaves one inherited; any other negative fd fails
// as dup2 fails in Popen's child. A source below 3 could be overwritten by an
// earlier dup2, so those are first copied above 2 in the parent.
int add_stdio(SpawnSetup& setup, const int (&stdio)[3]) {
  int sources[3] = {-1, -1, -1};
  for (int i = 0; i < 3; ++i) {
    const int fd = stdio[i];
    if (fd == -1) continue;
    if (fd < 0) return EBADF;
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
  // dup2 of an fd onto itself clears its close-on-exec flag (POSIX 2024,
  // glibc >= 2.29), as Popen's child does for pass_fds, first thing; and fails
  // with EBADF for an fd that is not open, as there.
  for (int fd : req.pass_fds) {
    const int err = posix_spawn_file_actions_adddup2(setup.actions(), fd, fd);
    if (err != 0) return err;
  }
  int err = add_stdio(setup, req.stdio);
  if (err != 0) return err;
  if (!req.close_fds) return 0;
  int next = 3;
  for (int fd : req.pass_fds) {
    if (fd < next) continue;
    err = add_closes(setup.actions(), next, fd);
    if (err != 0) return err;
    next = fd + 1;
  }
  return add_closes(setup.actions(), next, -1);
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

// Whether glibc's posix_spawnp would exec exactly the paths of exec_list, in
// order: PATH is this process's own (posix_spawnp reads it in the child, which
// shares our memory), and each entry joins the name as os.path.join does (an
// empty entry is the name alone; glibc writes entry + '/' + name, so an entry
// ending in '/' differs). Without PATH, glibc's default is not assumed.
// Read without the GIL, as the child reads it: a thread changing PATH at the
// same time races with both, as with any C code that reads the environment.
bool searched_by_spawnp(const SpawnRequest& req) {
  if (req.file.empty() || req.file.find('/') != std::string::npos) return false;
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  std::string_view rest(path);
  size_t i = 0;
  for (;;) {
    const size_t colon = rest.find(':');
    const std::string_view entry = rest.substr(0, colon);
    if (i == req.exec_list.size()) return false;
    const std::string_view candidate = req.exec_list[i++];
    if (entry.empty()) {
      if (candidate != req.file) return false;
    } else if (candidate.size() != entry.size() + 1 + req.file.size() ||
               !candidate.starts_with(entry) || candidate[entry.size()] != '/' ||
               !candidate.ends_with(req.file)) {
      return false;
    }
    if (colon == std::string_view::npos) break;
    rest.remove_prefix(colon + 1);
  }
  return i == req.exec_list.size();
}

// Popen's search: each path exec'd in turn (each in a child of its own) until
// one runs. With none run, the first error other than ENOENT and ENOTDIR, else
// the last.
SpawnResult spawn_each(const SpawnRequest& req, SpawnSetup& setup, char* const* argv,
                       char* const* envp) {
  int first = 0;
  int last = ENOENT;
  for (const std::string& path : req.exec_list) {
    pid_t pid = -1;
    const int err = posix_spawn(&pid, path.c_str(), setup.actions(), setup.attr(), argv, envp);
    if (err == 0) return {.pid = pid};
    last = err;
    if (first == 0 && err != ENOENT && err != ENOTDIR) first = err;
  }
  return {.error = first != 0 ? first : last};
}

int prepare(SpawnSetup& setup, const SpawnRequest& req, bool with_cwd) {
  int err = add_fd_actions(setup, req);
  if (err == 0 && with_cwd && req.cwd) {
    err = posix_spawn_file_actions_addchdir_np(setup.actions(), req.cwd->c_str());
  }
  if (err == 0) err = add_attributes(setup, req);
  return err;
}

// Whether setting the child up fails, and its errno. posix_spawn reports a
// failed set-up and a failed exec alike; spawning once more with the same
// set-up and a last file action that always fails with EISDIR (opening "/"
// for writing: an error no set-up step gives), so that no exec is reached,
// tells which: EISDIR back means the set-up went through. Appends to the file
// actions, so it is the last use of `setup`.
int setup_error(SpawnSetup& setup, char* const* argv, char* const* envp) {
  if (posix_spawn_file_actions_addopen(setup.actions(), 0, "/", O_WRONLY, 0) != 0) return 0;
  pid_t pid = -1;
  const int err = posix_spawn(&pid, "/", setup.actions(), setup.attr(), argv, envp);
  if (err == 0) {
    ::waitpid(pid, nullptr, 0);  // not reached: "/" can neither be opened so nor exec'd
    return 0;
  }
  return err == EISDIR ? 0 : err;
}

// After every exec failed: was it the set-up, and which step? A set-up that
// goes through without the chdir failed at the chdir.
SpawnResult failed_setup(const SpawnRequest& req, SpawnSetup& setup, char* const* argv,
                         char* const* envp) {
  const int err = setup_error(setup, argv, envp);
  if (err == 0) return {};
  if (req.cwd) {
    SpawnSetup without_cwd;
    if (prepare(without_cwd, req, false) == 0 && setup_error(without_cwd, argv, envp) == 0) {
      return {.error = err, .stage = SpawnStage::kChdir};
    }
  }
  return {.error = err, .stage = SpawnStage::kSetupInChild};
}

}  // namespace

SpawnResult spawn(const SpawnRequest& req) {
  SpawnSetup setup;
  if (const int err = prepare(setup, req, true); err != 0) {
    return {.error = err, .stage = SpawnStage::kSetupHere};
  }
  std::vector<char*> argv = c_strings(req.argv);
  std::vector<char*> env;
  if (req.env) env = c_strings(*req.env);
  char* const* envp = req.env ? env.data() : environ;
  if (searched_by_spawnp(req)) {
    // One child searches. When it fails, glibc's search may have stopped
    // where Popen's goes on, or report another error: Popen's search settles it.
    pid_t pid = -1;
    if (posix_spawnp(&pid, req.file.c_str(), setup.actions(), setup.attr(), argv.data(), envp) ==
        0) {
      return {.pid = pid};
    }
  }
  SpawnResult result = spawn_each(req, setup, argv.data(), envp);
  if (result.error != 0) {
    if (SpawnResult setup_failure = failed_setup(req, setup, argv.data(), envp);
        setup_failure.error != 0) {
      return setup_failure;
    }
  }
  return result;
}

}  // namespace fastloop
