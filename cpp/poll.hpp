// add_reader / add_writer: one uv_poll_t per watched fd, carrying the reader
// and writer Handles. When the fd is ready, its handles join the ready queue,
// as asyncio's selector loop does.
//
// A watcher left with neither handle is stopped but kept, idle, for the next
// add_* on that fd (a program may add and remove a reader on every wait; a
// new uv_poll_t costs five syscalls). libuv's stop and close always
// unregister the fd *number* from epoll, so an idle watcher must go before
// that number becomes another libuv handle: whatever opens a handle on an fd
// calls evict_idle(fd) first. The waits of sock_recv & co. are not here:
// SockWaits (sockwait.hpp) keeps their sockets registered between waits.
#pragma once

#include <uv.h>

#include <unordered_map>
#include <vector>

#include "handles.hpp"
#include "owner.hpp"

namespace fastloop {

class Loop;

enum class Interest { kRead, kWrite };

class FdWatchers {
 public:
  explicit FdWatchers(Loop* loop) noexcept : loop_(loop) {}
  FdWatchers(const FdWatchers&) = delete;
  FdWatchers& operator=(const FdWatchers&) = delete;

  // Watches `fd` and queues `h` (a new reference is taken) when it is ready,
  // replacing (and cancelling) a previous handle. False with the exception
  // set (the OSError asyncio's selector would raise, e.g. EPERM for a
  // regular file, or RuntimeError once the loop is closed).
  bool add(int fd, Interest what, HandleObject* h);
  // Stops watching; cancels the handle. False when nothing was registered.
  bool remove(int fd, Interest what);
  // The handle registered for fd and `what`, or nullptr (borrowed).
  HandleObject* handle(int fd, Interest what) const noexcept {
    auto it = by_fd_.find(fd);
    if (it == by_fd_.end()) return nullptr;
    return what == Interest::kRead ? it->second->reader : it->second->writer;
  }
  // Closes an idle watcher of `fd`, before a libuv handle is opened on it.
  void evict_idle(int fd);
  // Before a transport or listener takes over `fd`: its watcher goes, idle
  // or not, and the handles registered on it are cancelled (asyncio's
  // transports replace the fd's reader in the selector the same way).
  void evict(int fd);
  bool empty() const noexcept { return by_fd_.empty(); }
  // Fds with a reader or a writer (idle watchers are kept for reuse). O(fds).
  size_t watched() const noexcept;

  // Before each poll: libuv hands fd changes to epoll only then, and aborts if
  // such an fd was closed meanwhile (asyncio tolerates closing a watched fd).
  // Watchers of fds closed since they changed are stopped here instead.
  void stop_closed_fds() noexcept;

  // Loop close: cancel every handle and close every uv_poll_t.
  void close_all();
  int traverse(visitproc visit, void* arg) const;

 private:
  // One uv_poll_t; it frees itself once closed.
  class Watcher final : public HandleOwner {
   public:
    Watcher(Loop* loop, int fd) noexcept;
    bool init() noexcept;
    uv_poll_t poll{};
    int fd;
    HandleObject* reader = nullptr;
    HandleObject* writer = nullptr;

   private:
    ~Watcher() override;
    friend class FdWatchers;
  };
  static void on_poll(uv_poll_t* poll, int status, int events) noexcept;
  int restart(Watcher* w);
  void retire(Watcher* w);

  Loop* loop_;
  std::unordered_map<int, Watcher*> by_fd_;
  std::vector<int> changed_fds_;  // fds whose uv_poll_start has not reached epoll yet
};

}  // namespace fastloop
