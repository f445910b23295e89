#include "poll.hpp"

#include <fcntl.h>

#include <cerrno>
#include <new>
#include <utility>

#include "debug.hpp"
#include "errors.hpp"
#include "loop.hpp"

namespace fastloop {

FdWatchers::Watcher::Watcher(Loop* loop, int fd) noexcept
    : HandleOwner(loop, Lifetime::kSelf), fd(fd) {
  FASTLOOP_COUNT(fd_watchers, 1);
}

FdWatchers::Watcher::~Watcher() {
  FASTLOOP_COUNT(fd_watchers, -1);
}

bool FdWatchers::Watcher::init() noexcept {
  return init_handle(&poll, nullptr, [this](uv_loop_t* l, uv_poll_t* p) {
    // libuv makes the fd non-blocking; asyncio's add_reader leaves it as it
    // was, and so do we.
    const int flags = fcntl(fd, F_GETFL);
    const int err = uv_poll_init(l, p, fd);
    if (flags >= 0) fcntl(fd, F_SETFL, flags);
    return err;
  });
}

bool FdWatchers::add(int fd, Interest what, HandleObject* h) {
  Watcher* w = nullptr;
  auto it = by_fd_.find(fd);
  if (it != by_fd_.end()) {
    w = it->second;
  } else {
    w = new (std::nothrow) Watcher(loop_, fd);
    if (w == nullptr) {
      PyErr_NoMemory();
      return false;
    }
    if (!w->init()) {
      delete w;  // never registered: ours to free
      return false;
    }
    by_fd_.emplace(fd, w);
  }
  HandleObject*& slot = what == Interest::kRead ? w->reader : w->writer;
  HandleObject* old = slot;
  Py_INCREF(h);
  slot = h;
  const int err = restart(w);
  if (err < 0) {
    slot = old;
    Py_DECREF(h);
    if (w->reader == nullptr && w->writer == nullptr) retire(w);
    set_uv_error(err);
    return false;
  }
  if (old != nullptr) {
    cancel_handle(old);
    Py_DECREF(old);
  }
  return true;
}

bool FdWatchers::remove(int fd, Interest what) {
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return false;
  Watcher* w = it->second;
  HandleObject*& slot = what == Interest::kRead ? w->reader : w->writer;
  HandleObject* old = slot;
  if (old == nullptr) return false;
  slot = nullptr;
  if (w->reader == nullptr && w->writer == nullptr) {
    uv_poll_stop(&w->poll);  // kept idle for the next add_* on this fd
  } else {
    restart(w);
  }
  // Released last: cancelling may run Python code that watches fds again.
  cancel_handle(old);
  Py_DECREF(old);
  return true;
}

size_t FdWatchers::watched() const noexcept {
  size_t n = 0;
  for (const auto& [fd, w] : by_fd_) n += (w->reader != nullptr || w->writer != nullptr) ? 1 : 0;
  return n;
}

void FdWatchers::evict_idle(int fd) {
  auto it = by_fd_.find(fd);
  if (it != by_fd_.end() && it->second->reader == nullptr && it->second->writer == nullptr) {
    retire(it->second);
  }
}

void FdWatchers::evict(int fd) {
  loop_->sock_waits().evict(fd);
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return;
  Watcher* w = it->second;
  HandleObject* reader = std::exchange(w->reader, nullptr);
  HandleObject* writer = std::exchange(w->writer, nullptr);
  retire(w);
  // Released last: cancelling may run Python code that watches fds again.
  for (HandleObject* h : {reader, writer}) {
    if (h == nullptr) continue;
    cancel_handle(h);
    Py_DECREF(h);
  }
}

int FdWatchers::restart(Watcher* w) {
  if (!w->handle_open()) return UV_EBADF;
  int events = 0;
  if (w->reader != nullptr) events |= UV_READABLE;
  if (w->writer != nullptr) events |= UV_WRITABLE;
  changed_fds_.push_back(w->fd);
  return uv_poll_start(&w->poll, events, on_poll);
}

void FdWatchers::stop_closed_fds() noexcept {
  for (int fd : changed_fds_) {
    auto it = by_fd_.find(fd);
    if (it != by_fd_.end() && it->second->handle_open() && fcntl(fd, F_GETFD) < 0 &&
        errno == EBADF) {
      // Still registered, so remove_reader() answers True as asyncio's does.
      uv_poll_stop(&it->second->poll);
    }
  }
  changed_fds_.clear();
}

void FdWatchers::retire(Watcher* w) {
  by_fd_.erase(w->fd);
  // The close callback frees the watcher.
  w->close_handle();
}

void FdWatchers::on_poll(uv_poll_t* poll, int status, int events) noexcept {
  auto* w = HandleOwner::owner_of<Watcher>(poll->data);
  Loop* loop = w->loop();
  if (status < 0) {
    // An error on the fd (POLLERR, e.g. a reset connection). libuv has
    // stopped the handle; asyncio's level-triggered epoll keeps reporting the
    // fd ready to both callbacks until they act, so restart it.
    events = UV_READABLE | UV_WRITABLE;
    loop->fd_watchers().restart(w);
  }
  GilFromLibuv gil(loop);
  if ((events & UV_READABLE) != 0 && w->reader != nullptr) loop->push_ready_now(w->reader);
  if ((events & UV_WRITABLE) != 0 && w->writer != nullptr) loop->push_ready_now(w->writer);
}

void FdWatchers::close_all() {
  std::vector<HandleObject*> released;
  for (auto& [fd, w] : by_fd_) {
    if (w->reader != nullptr) released.push_back(w->reader);
    if (w->writer != nullptr) released.push_back(w->writer);
    w->reader = w->writer = nullptr;
    w->close_handle();  // the close callback frees it
  }
  by_fd_.clear();
  for (HandleObject* h : released) {
    cancel_handle(h);
    Py_DECREF(h);
  }
}

int FdWatchers::traverse(visitproc visit, void* arg) const {
  for (const auto& [fd, w] : by_fd_) {
    if (w->reader != nullptr) Py_VISIT(w->reader);
    if (w->writer != nullptr) Py_VISIT(w->writer);
  }
  return 0;
}

}  // namespace fastloop
