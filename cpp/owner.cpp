#include "owner.hpp"

#include <utility>

#include "debug.hpp"
#include "errors.hpp"
#include "loop.hpp"

namespace fastloop {

HandleOwner::~HandleOwner() {
  // Never with a live handle: libuv would keep freed memory in its queues.
  // The keep-alive (kPython) and the close callback (kSelf) make it so.
  Py_CLEAR(context_);
}

bool HandleOwner::may_init() const noexcept {
  if (state_ != State::kNone) {
    PyErr_SetString(PyExc_RuntimeError, "the handle is already initialized");
    return false;
  }
  return loop_->check_open();
}

uv_loop_t* HandleOwner::loop_uv() const noexcept {
  return loop_->uv();
}

bool HandleOwner::finish_init(uv_handle_t* handle, PyObject* py_self, int err) noexcept {
  // libuv's init functions check their arguments before they register the
  // handle, so a failed init leaves nothing to close.
  if (err < 0) {
    set_uv_error(err);
    return false;
  }
  handle_ = handle;
  handle->data = this;
  state_ = State::kOpen;
  // Ownership: from here the loop keeps the Python owner alive until on_close.
  if (lifetime_ == Lifetime::kPython) keep_alive_ = Py_NewRef(py_self);
  loop_->register_owner(this);
  FASTLOOP_COUNT(uv_handles, 1);
  return true;
}

void HandleOwner::close_handle() noexcept {
  if (state_ != State::kOpen) return;
  state_ = State::kClosing;
  // Ownership passes to libuv until on_close.
  uv_close(handle_, on_close);
}

void HandleOwner::on_close(uv_handle_t* handle) noexcept {
  auto* self = static_cast<HandleOwner*>(handle->data);
  Loop* loop = self->loop_;  // outlives this callback: it runs inside its uv_run
  GilFromLibuv gil(loop);
  self->state_ = State::kClosed;
  self->handle_closed();
  loop->unregister_owner(self);
  FASTLOOP_COUNT(uv_handles, -1);
  if (self->lifetime_ == Lifetime::kSelf) {
    delete self;
    return;
  }
  // Last: this may free the Python object and this owner with it.
  PyObject* keep = std::exchange(self->keep_alive_, nullptr);
  Py_XDECREF(keep);
}

bool HandleOwner::capture_context() noexcept {
  PyObject* ctx = PyContext_CopyCurrent();
  if (ctx == nullptr) return false;
  Py_XSETREF(context_, ctx);
  return true;
}

HandleOwner::CallbackScope::CallbackScope(HandleOwner& owner, PyObject* context) noexcept
    : owner_(owner), held_(Py_XNewRef(owner.keep_alive_)), context_(context) {
  // A context can be entered once at a time: nested scopes share the entry.
  if (owner.scope_depth_++ == 0 && context_ != nullptr) {
    entered_ = PyContext_Enter(context_) == 0;
    ok_ = entered_;
  }
}

HandleOwner::CallbackScope::~CallbackScope() {
  if (entered_) {
    // Keep an exception the callback left for the caller to report.
    PyObject* pending = PyErr_Occurred() != nullptr ? take_exception() : nullptr;
    if (PyContext_Exit(context_) < 0) PyErr_WriteUnraisable(context_);
    if (pending != nullptr) restore_exception(pending);
  }
  --owner_.scope_depth_;
  Py_XDECREF(held_);  // last: may free the owner
}

}  // namespace fastloop
