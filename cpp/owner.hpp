// HandleOwner: the one base of every C++ object that owns a libuv handle (a
// transport, a listener, an fd watcher, the loop's timer, wake-up and signal
// poll). The lifetime rules of DESIGN.md (rule 7) live here, and only here:
//
//   - init_handle() runs the uv_*_init call and checks it. On failure the
//     Python exception asyncio would raise is set (through errors.*) and
//     nothing is left to undo. On success the handle belongs to the loop.
//   - From that moment until libuv's close callback, the owner cannot be
//     freed: a Python-owned owner (Lifetime::kPython) is kept alive by a
//     strong reference (keep-alive) held on libuv's behalf; a plain C++ owner
//     (Lifetime::kSelf) is deleted by the close callback and by nothing else.
//     This holds whether or not the owner was ever "adopted" or started.
//   - The garbage collector is shown that reference as asyncio's selector
//     would hold it: while the handle is active (reading, writing, closing,
//     listening: gc_active()) the loop's traversal visits it, as a selector
//     registration keeps an asyncio transport reachable; while it is idle
//     (a paused transport, say) the owner's own traversal visits it, so a
//     transport the program dropped is garbage as on asyncio's loop. Its
//     finalizer then closes the handle (the keep-alive still holds the
//     memory), and it is freed after the close callback. A loop dropped with
//     connections open is collected too: loop and handles form cycles the
//     collector sees, and the loop's __del__ closes them.
//   - close_handle() calls uv_close once. The close callback calls
//     handle_closed(), unregisters the owner from the loop, and then drops
//     the keep-alive reference (or deletes the object): the last thing it does.
//   - When the loop closes first, it calls close_with_loop() on every owner
//     still registered and runs libuv until every close callback has run, so
//     no handle outlives the uv_loop_t. Afterwards handle_open() is false for
//     good and every method of a subclass checks it before touching libuv.
//
// GIL: init_handle() and close_handle() are called with the GIL held; the
// close callback takes it back if the loop released it around a poll.
#pragma once

#include <uv.h>

#include <cstdint>

#include "pyutil.hpp"

namespace fastloop {

class Loop;

// Who frees a HandleOwner once libuv has closed its handle.
enum class Lifetime : uint8_t {
  kPython,  // a Python object owns it: the loop holds that object until the close callback
  kSelf,    // a plain C++ object: the close callback deletes it
};

class HandleOwner {
 public:
  HandleOwner(const HandleOwner&) = delete;
  HandleOwner& operator=(const HandleOwner&) = delete;

  Loop* loop() const noexcept { return loop_; }
  // uv_close has not been called (and init succeeded): libuv calls are valid.
  bool handle_open() const noexcept { return state_ == State::kOpen; }
  // init succeeded and the close callback has not run yet.
  bool handle_alive() const noexcept { return state_ == State::kOpen || state_ == State::kClosing; }
  // The loop is closing: close the handle (and whatever else the owner must
  // let go of first). Called with the GIL held; must not call into protocols.
  virtual void close_with_loop() noexcept { close_handle(); }
  // Does libuv use the handle now (see above)? Closing always counts.
  virtual bool gc_active() const noexcept { return true; }
  // The owner whose handle's `data` is `data` (what init_handle stored).
  template <class T>
  static T* owner_of(void* data) noexcept {
    return static_cast<T*>(static_cast<HandleOwner*>(data));
  }

 protected:
  HandleOwner(Loop* loop, Lifetime lifetime) noexcept : loop_(loop), lifetime_(lifetime) {}
  // Python-owned owners are destroyed by their Python object (GIL held);
  // kSelf ones by the close callback (GIL held as well).
  virtual ~HandleOwner();

  // Runs `init(uv_loop, handle)`, `handle` being a member of the subclass. For a
  // Python-owned owner `py_self` is the Python object that owns this C++
  // object. False with the exception set (RuntimeError when the loop is
  // closed, OSError & co. for a libuv error); then nothing needs undoing.
  template <class UvHandle, class Init>
  bool init_handle(UvHandle* handle, PyObject* py_self, Init&& init) noexcept {
    if (!may_init()) return false;
    const int err = init(loop_uv(), handle);
    return finish_init(reinterpret_cast<uv_handle_t*>(handle), py_self, err);
  }
  // uv_close, once. Safe to call in any state.
  void close_handle() noexcept;
  // Called by the close callback with the GIL held, before the owner is
  // released: drop what the handle's callbacks used.
  virtual void handle_closed() noexcept {}
  uv_handle_t* uv_handle() const noexcept { return handle_; }
  // kPython: the owning Python object while the handle lives, else nullptr.
  PyObject* keep_alive() const noexcept { return keep_alive_; }

  // ---- calling into Python from libuv callbacks ----
  // The contextvars.Context protocol callbacks run in: a copy of the context
  // current when the owner was made, as asyncio's transports and servers
  // copy it into the handles they register. False with an exception set.
  bool capture_context() noexcept;
  PyObject* context() const noexcept { return context_; }
  // A protocol call from a libuv callback runs inside a CallbackScope: in the
  // owner's context, entered once however deeply scopes nest (a protocol
  // method may call back into its transport, which may call the protocol
  // again), and with the owner's Python object held, so that nothing the
  // callback does can free the owner before the scope ends. After the call
  // the caller checks handle_open(): the callback may have closed it.
  class CallbackScope {
   public:
    explicit CallbackScope(HandleOwner& owner) noexcept : CallbackScope(owner, owner.context_) {}
    // Runs in `context` instead of the owner's (borrowed; outlives the scope).
    CallbackScope(HandleOwner& owner, PyObject* context) noexcept;
    ~CallbackScope();
    CallbackScope(const CallbackScope&) = delete;
    CallbackScope& operator=(const CallbackScope&) = delete;
    // False (exception set) when the context could not be entered: do not
    // call into Python then, report the exception instead.
    bool ok() const noexcept { return ok_; }

   private:
    HandleOwner& owner_;
    PyObject* held_;
    PyObject* context_;
    bool entered_ = false;
    bool ok_ = true;
  };
  // Garbage collector support: what the base holds (the keep-alive while the
  // handle is idle, see above).
  int traverse_base(visitproc visit, void* arg) const noexcept {
    Py_VISIT(context_);
    if (!loop_holds()) Py_VISIT(keep_alive_);
    return 0;
  }
  // The loop's traversal shows the keep-alive (not the owner's own).
  bool loop_holds() const noexcept { return state_ == State::kClosing || gc_active(); }

 private:
  friend class Loop;
  enum class State : uint8_t { kNone, kOpen, kClosing, kClosed };

  bool may_init() const noexcept;
  uv_loop_t* loop_uv() const noexcept;
  bool finish_init(uv_handle_t* handle, PyObject* py_self, int err) noexcept;
  static void on_close(uv_handle_t* handle) noexcept;

  Loop* loop_;
  uv_handle_t* handle_ = nullptr;
  PyObject* keep_alive_ = nullptr;  // kPython: the owning Python object, until on_close
  PyObject* context_ = nullptr;     // see capture_context()
  int scope_depth_ = 0;             // CallbackScopes open on this owner
  // The loop's list of registered owners (intrusive: no allocation per handle).
  HandleOwner* prev_ = nullptr;
  HandleOwner* next_ = nullptr;
  State state_ = State::kNone;
  Lifetime lifetime_;
};

}  // namespace fastloop
