#include "handles.hpp"

#include <structmember.h>

#include <cmath>
#include <vector>

#include "debug.hpp"
#include "hooks.hpp"
#include "loop.hpp"

namespace fastloop {

PyTypeObject HandleType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject TimerHandleType = {PyVarObject_HEAD_INIT(nullptr, 0)};

namespace {

// Free lists. Every access happens with the GIL held.
constexpr int kFreeListMax = 512;
HandleObject* g_free_handles[kFreeListMax];
int g_free_handles_n = 0;
TimerHandleObject* g_free_timers[kFreeListMax];
int g_free_timers_n = 0;

// Every field a handle owns, empty (a fresh or recycled object's state).
void init_empty(HandleObject* h) noexcept {
  h->callback = nullptr;
  h->context = nullptr;
  h->loop = nullptr;
  h->core = nullptr;
  h->args_tuple = nullptr;
  h->source_traceback = nullptr;
  h->cached_repr = nullptr;
  h->weakreflist = nullptr;
  h->nargs = 0;
  h->slots[0] = nullptr;
  h->cancelled = false;
  h->running = false;
  h->context_untracked = false;
}

template <class T>
T* alloc_from(PyTypeObject* type, T** list, int& n) noexcept {
  T* h = nullptr;
  if (n > 0) {
    h = list[--n];
    // The memory kept its ob_type; only the reference count is new.
    _Py_NewReference(reinterpret_cast<PyObject*>(h));
  } else {
    h = PyObject_GC_New(T, type);
    if (h == nullptr) return nullptr;
  }
  init_empty(h);
  FASTLOOP_COUNT(handles, 1);
  return h;
}

PyObject* const* handle_argv(HandleObject* h, size_t* nargsf) noexcept {
  if (h->args_tuple != nullptr) {
    *nargsf = static_cast<size_t>(h->nargs);
    return &PyTuple_GET_ITEM(h->args_tuple, 0);
  }
  *nargsf = static_cast<size_t>(h->nargs) | PY_VECTORCALL_ARGUMENTS_OFFSET;
  return h->slots + 1;
}

// Drops the callback and its arguments (what cancel() releases).
void release_callback(HandleObject* h) noexcept {
  // Detach first: a __del__ run by a DECREF below may look at this handle.
  PyObject* cb = h->callback;
  PyObject* tuple = h->args_tuple;
  PyObject* inline_args[kInlineArgs];
  const Py_ssize_t n = tuple != nullptr ? 0 : h->nargs;
  for (Py_ssize_t i = 0; i < n; ++i) inline_args[i] = h->slots[1 + i];
  h->callback = nullptr;
  h->args_tuple = nullptr;
  h->nargs = 0;
  Py_XDECREF(cb);
  Py_XDECREF(tuple);
  for (Py_ssize_t i = 0; i < n; ++i) Py_DECREF(inline_args[i]);
}

// CPython's Context dealloc assumes a tracked object: the copy is tracked
// again before this handle lets go of it.
void track_own_context(HandleObject* h) noexcept {
  if (!h->context_untracked) return;
  h->context_untracked = false;
  PyObject_GC_Track(h->context);
}

void clear_all(HandleObject* h) noexcept {
  release_callback(h);
  track_own_context(h);
  Py_CLEAR(h->context);
  Py_CLEAR(h->loop);
  Py_CLEAR(h->source_traceback);
  Py_CLEAR(h->cached_repr);
}

// Fills an empty handle. On failure (false, exception set) what was filled
// is consistent for clear_all(): nargs counts only the arguments held.
bool fill_handle(HandleObject* h, PyObject* loop, Loop* core, PyObject* callback,
                 PyObject* const* args, Py_ssize_t nargs, PyObject* context) noexcept {
  h->callback = Py_NewRef(callback);
  h->loop = Py_NewRef(loop);
  h->core = core;
  if (nargs <= kInlineArgs) {
    for (Py_ssize_t i = 0; i < nargs; ++i) h->slots[1 + i] = Py_NewRef(args[i]);
  } else {
    PyObject* tuple = PyTuple_New(nargs);
    if (tuple == nullptr) return false;
    for (Py_ssize_t i = 0; i < nargs; ++i) PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    h->args_tuple = tuple;
  }
  h->nargs = nargs;
  if (context == nullptr || context == Py_None) {
    h->context = PyContext_CopyCurrent();
    h->context_untracked = h->context != nullptr;  // a fresh copy; see finish_new
  } else {
    h->context = Py_NewRef(context);
  }
  if (h->context == nullptr) return false;
  if (core->debug()) {
    h->source_traceback = PyObject_CallNoArgs(g_hooks.extract_stack);
    if (h->source_traceback == nullptr) return false;
  }
  return true;
}

template <class T>
T* finish_new(T* h, bool ok, Tracking tracking) noexcept {
  // fill_handle() set context_untracked for a fresh copy of the context; it
  // becomes true only here, for a queued handle.
  if (tracking == Tracking::kQueued && ok) {
    if (h->context_untracked && h->core->many_pending()) {
      PyObject_GC_UnTrack(h->context);  // only this handle holds it
    } else {
      h->context_untracked = false;
    }
  } else {
    h->context_untracked = false;
    PyObject_GC_Track(h);
  }
  if (!ok) {
    Py_DECREF(h);
    return nullptr;
  }
  return h;
}

// ---- type slots -------------------------------------------------------------

int handle_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* h = reinterpret_cast<HandleObject*>(self);
  Py_VISIT(h->callback);
  if (h->context_untracked) {
    // What the untracked copy holds, on its behalf (this is its only holder
    // that the collector is told about).
    if (const int r = Py_TYPE(h->context)->tp_traverse(h->context, visit, arg); r != 0) return r;
  } else {
    Py_VISIT(h->context);
  }
  Py_VISIT(h->loop);
  Py_VISIT(h->args_tuple);
  Py_VISIT(h->source_traceback);
  Py_VISIT(h->cached_repr);
  if (h->args_tuple == nullptr) {
    for (Py_ssize_t i = 0; i < h->nargs; ++i) Py_VISIT(h->slots[1 + i]);
  }
  return 0;
}

int handle_clear(PyObject* self) {
  clear_all(reinterpret_cast<HandleObject*>(self));
  return 0;
}

void handle_dealloc(PyObject* self) {
  FASTLOOP_COUNT(handles, -1);
  PyObject_GC_UnTrack(self);
  auto* h = reinterpret_cast<HandleObject*>(self);
  // Before the handle can be recycled: a dead weak reference stays dead.
  if (h->weakreflist != nullptr) PyObject_ClearWeakRefs(self);
  clear_all(h);
  if (Py_IS_TYPE(self, &HandleType) && g_free_handles_n < kFreeListMax) {
    g_free_handles[g_free_handles_n++] = h;
  } else if (Py_IS_TYPE(self, &TimerHandleType) && g_free_timers_n < kFreeListMax) {
    g_free_timers[g_free_timers_n++] = reinterpret_cast<TimerHandleObject*>(self);
  } else {
    // A Python subclass's instance: its type's allocator (subtype_dealloc
    // releases the heap type's reference after this returns).
    Py_TYPE(self)->tp_free(self);
  }
}

PyObject* handle_repr(PyObject* self) {
  auto* h = reinterpret_cast<HandleObject*>(self);
  if (h->cached_repr != nullptr) return Py_NewRef(h->cached_repr);
  return PyObject_CallOneArg(g_hooks.handle_repr, self);
}

// Handle(callback, args, loop, context=None) and TimerHandle(when, callback,
// args, loop, context=None), as asyncio.events' classes: __new__ makes an
// empty handle of the requested type (a subclass included), __init__ fills
// it, so a subclass's __init__ can call super().__init__(...) as with asyncio.
PyObject* handle_new(PyTypeObject* type, PyObject* /*args*/, PyObject* /*kwargs*/) {
  HandleObject* h = nullptr;
  if (type == &HandleType) {
    h = alloc_from(&HandleType, g_free_handles, g_free_handles_n);
  } else if (type == &TimerHandleType) {
    h = alloc_from(&TimerHandleType, g_free_timers, g_free_timers_n);
  } else {
    h = reinterpret_cast<HandleObject*>(type->tp_alloc(type, 0));
    if (h == nullptr) return nullptr;
    init_empty(h);
    FASTLOOP_COUNT(handles, 1);
    // tp_alloc tracked it already.
    return reinterpret_cast<PyObject*>(h);
  }
  if (h == nullptr) return nullptr;
  if (PyObject_TypeCheck(h, &TimerHandleType)) {
    auto* t = reinterpret_cast<TimerHandleObject*>(h);
    t->when = 0.0;
    t->scheduled = false;
  }
  PyObject_GC_Track(h);
  return reinterpret_cast<PyObject*>(h);
}

int handle_init(PyObject* self, PyObject* args, PyObject* kwargs) {
  auto* h = reinterpret_cast<HandleObject*>(self);
  const bool timer = PyObject_TypeCheck(self, &TimerHandleType) != 0;
  static const char* kHandleKw[] = {"callback", "args", "loop", "context", nullptr};
  static const char* kTimerKw[] = {"when", "callback", "args", "loop", "context", nullptr};
  PyObject* when = nullptr;
  PyObject* callback = nullptr;
  PyObject* cb_args = nullptr;
  PyObject* loop = nullptr;
  PyObject* context = Py_None;
  const bool parsed = timer ? PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|O:TimerHandle",
                                                          const_cast<char**>(kTimerKw), &when,
                                                          &callback, &cb_args, &loop, &context)
                            : PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O:Handle",
                                                          const_cast<char**>(kHandleKw), &callback,
                                                          &cb_args, &loop, &context);
  if (!parsed) return -1;
  Loop* core = core_of(loop);
  if (core == nullptr) {
    PyErr_SetString(PyExc_TypeError, "Handle() needs a fastloop loop");
    return -1;
  }
  double deadline = 0.0;
  if (timer && !deadline_of(when, &deadline)) return -1;
  Ref seq(cb_args == Py_None ? PyTuple_New(0) : PySequence_Tuple(cb_args));
  if (!seq) return -1;
  if (h->running) {
    PyErr_SetString(PyExc_RuntimeError, "cannot re-initialize a running handle");
    return -1;
  }
  clear_all(h);  // __init__ called again: start from empty
  h->cancelled = false;
  if (timer) reinterpret_cast<TimerHandleObject*>(h)->when = deadline;
  const bool ok = fill_handle(h, loop, core, callback, &PyTuple_GET_ITEM(seq.get(), 0),
                              PyTuple_GET_SIZE(seq.get()), context);
  h->context_untracked = false;  // the copy stays tracked (see finish_new)
  return ok ? 0 : -1;
}

PyObject* handle_cancel_meth(PyObject* self, PyObject* /*unused*/) {
  cancel_handle(reinterpret_cast<HandleObject*>(self));
  Py_RETURN_NONE;
}

PyObject* handle_cancelled_meth(PyObject* self, PyObject* /*unused*/) {
  return PyBool_FromLong(reinterpret_cast<HandleObject*>(self)->cancelled);
}

PyObject* handle_get_context(PyObject* self, PyObject* /*unused*/) {
  return Py_NewRef(reinterpret_cast<HandleObject*>(self)->context);
}

PyObject* handle_run_meth(PyObject* self, PyObject* /*unused*/) {
  // An empty handle (a subclass whose __init__ did not fill it) runs nothing.
  auto* h = reinterpret_cast<HandleObject*>(self);
  if (h->cancelled || h->callback == nullptr) Py_RETURN_NONE;
  if (!run_handle(h)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* get_callback(PyObject* self, void* /*closure*/) {
  auto* h = reinterpret_cast<HandleObject*>(self);
  return Py_NewRef(h->callback != nullptr ? h->callback : Py_None);
}

PyObject* get_args(PyObject* self, void* /*closure*/) {
  auto* h = reinterpret_cast<HandleObject*>(self);
  if (h->callback == nullptr) Py_RETURN_NONE;
  if (h->args_tuple != nullptr) return Py_NewRef(h->args_tuple);
  PyObject* t = PyTuple_New(h->nargs);
  if (t == nullptr) return nullptr;
  for (Py_ssize_t i = 0; i < h->nargs; ++i) PyTuple_SET_ITEM(t, i, Py_NewRef(h->slots[1 + i]));
  return t;
}

PyObject* get_cancelled(PyObject* self, void* /*closure*/) {
  return PyBool_FromLong(reinterpret_cast<HandleObject*>(self)->cancelled);
}

PyObject* get_loop(PyObject* self, void* /*closure*/) {
  auto* h = reinterpret_cast<HandleObject*>(self);
  return Py_NewRef(h->loop != nullptr ? h->loop : Py_None);
}

PyObject* get_context(PyObject* self, void* /*closure*/) {
  auto* h = reinterpret_cast<HandleObject*>(self);
  return Py_NewRef(h->context != nullptr ? h->context : Py_None);
}

PyObject* get_source_traceback(PyObject* self, void* /*closure*/) {
  auto* h = reinterpret_cast<HandleObject*>(self);
  return Py_NewRef(h->source_traceback != nullptr ? h->source_traceback : Py_None);
}

PyObject* timer_when(PyObject* self, PyObject* /*unused*/) {
  return PyFloat_FromDouble(reinterpret_cast<TimerHandleObject*>(self)->when);
}

PyObject* get_when(PyObject* self, void* /*closure*/) {
  return PyFloat_FromDouble(reinterpret_cast<TimerHandleObject*>(self)->when);
}

PyObject* get_scheduled(PyObject* self, void* /*closure*/) {
  return PyBool_FromLong(reinterpret_cast<TimerHandleObject*>(self)->scheduled);
}

// TimerHandles order by deadline; equality also compares what they run, as
// asyncio.TimerHandle does.
PyObject* timer_richcompare(PyObject* a, PyObject* b, int op) {
  if (!is_timer_handle(b)) Py_RETURN_NOTIMPLEMENTED;
  auto* x = reinterpret_cast<TimerHandleObject*>(a);
  auto* y = reinterpret_cast<TimerHandleObject*>(b);
  if (op == Py_EQ || op == Py_NE) {
    bool eq = x == y;
    if (!eq && x->when == y->when && x->cancelled == y->cancelled) {
      Ref xa(get_args(a, nullptr));
      Ref ya(get_args(b, nullptr));
      if (!xa || !ya) return nullptr;
      PyObject* xc = x->callback != nullptr ? x->callback : Py_None;
      PyObject* yc = y->callback != nullptr ? y->callback : Py_None;
      int r = PyObject_RichCompareBool(xc, yc, Py_EQ);
      if (r < 0) return nullptr;
      if (r == 1) r = PyObject_RichCompareBool(xa.get(), ya.get(), Py_EQ);
      if (r < 0) return nullptr;
      eq = r == 1;
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
  }
  Py_RETURN_RICHCOMPARE(x->when, y->when, op);
}

Py_hash_t timer_hash(PyObject* self) {
  Ref w(PyFloat_FromDouble(reinterpret_cast<TimerHandleObject*>(self)->when));
  return w ? PyObject_Hash(w.get()) : -1;
}

PyMethodDef kHandleMethods[] = {
    {"cancel", handle_cancel_meth, METH_NOARGS, "Cancel the callback if it has not run yet."},
    {"cancelled", handle_cancelled_meth, METH_NOARGS, "True once cancel() was called."},
    {"get_context", handle_get_context, METH_NOARGS, "The contextvars.Context it runs in."},
    {"_run", handle_run_meth, METH_NOARGS, "Run the callback now, as the loop does."},
    {nullptr, nullptr, 0, nullptr},
};

PyMethodDef kTimerHandleMethods[] = {
    {"when", timer_when, METH_NOARGS, "The loop time at which the callback is due."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef kHandleGetSet[] = {
    {"_callback", get_callback, nullptr, nullptr, nullptr},
    {"_args", get_args, nullptr, nullptr, nullptr},
    {"_cancelled", get_cancelled, nullptr, nullptr, nullptr},
    {"_loop", get_loop, nullptr, nullptr, nullptr},
    {"_context", get_context, nullptr, nullptr, nullptr},
    {"_source_traceback", get_source_traceback, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyGetSetDef kTimerHandleGetSet[] = {
    {"_when", get_when, nullptr, nullptr, nullptr},
    {"_scheduled", get_scheduled, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

// Is `f` a coroutine function as asyncio.iscoroutinefunction() sees it?
// Decides the common cases (functions, bound methods, partials, C callables)
// without a Python call. Returns -1 with an exception set on error.
int is_coroutine_function(PyObject* f) noexcept {
  Ref held;  // keeps an unwrapped partial's function alive
  for (int depth = 0; depth < 16; ++depth) {
    if (PyMethod_Check(f)) {
      f = PyMethod_GET_FUNCTION(f);
    } else if (g_hooks.partial_type != nullptr &&
               PyObject_TypeCheck(f, reinterpret_cast<PyTypeObject*>(g_hooks.partial_type))) {
      held = Ref(PyObject_GetAttrString(f, "func"));
      if (!held) return -1;
      f = held.get();
    } else {
      break;
    }
  }
  if (PyFunction_Check(f)) {
    auto* code = reinterpret_cast<PyCodeObject*>(PyFunction_GET_CODE(f));
    return (code->co_flags & CO_COROUTINE) != 0 ? 1 : 0;
  }
  // Instances of Python classes may carry asyncio's marker (AsyncMock does).
  if (PyType_HasFeature(Py_TYPE(f), Py_TPFLAGS_HEAPTYPE) && !PyType_Check(f)) {
    Ref r(PyObject_CallOneArg(g_hooks.is_coroutine_marked, f));
    if (!r) return -1;
    return PyObject_IsTrue(r.get());
  }
  return 0;
}

}  // namespace

bool check_callback(PyObject* callback, const char* method) noexcept {
  int is_coro = PyCoro_CheckExact(callback) ? 1 : is_coroutine_function(callback);
  if (is_coro < 0) return false;
  if (is_coro == 1) {
    PyErr_Format(PyExc_TypeError, "coroutines cannot be used with %s()", method);
    return false;
  }
  if (!PyCallable_Check(callback)) {
    PyErr_Format(PyExc_TypeError, "a callable object was expected by %s(), got %R", method,
                 callback);
    return false;
  }
  return true;
}

bool deadline_of(PyObject* when, double* out) noexcept {
  if (PyFloat_CheckExact(when)) {
    *out = PyFloat_AS_DOUBLE(when);
    return true;
  }
  if (!PyLong_CheckExact(when)) {
    // asyncio keeps the object and compares it with the other deadlines in
    // its heap: one that cannot be compared with a float fails there (an
    // object with only __index__: TypeError; Decimal('NaN'): InvalidOperation).
    // The same comparison here raises the same error, whatever the heap holds.
    Ref zero(PyFloat_FromDouble(0.0));
    if (!zero || PyObject_RichCompareBool(when, zero.get(), Py_LT) < 0) return false;
  }
  const double d = PyFloat_AsDouble(when);
  if (d == -1.0 && PyErr_Occurred()) {
    // An int no float can hold: asyncio keeps it as it is; here it is a
    // deadline at infinity (never due) or minus infinity (due at once).
    if (!PyLong_Check(when) || !PyErr_ExceptionMatches(PyExc_OverflowError)) {
      // Not a real number (asyncio stores it and fails on it later): refused
      // now, always as the TypeError the deadline's type deserves.
      Ref cause(take_exception());
      PyErr_Format(PyExc_TypeError, "the deadline must be a real number, not '%.100s'",
                   Py_TYPE(when)->tp_name);
      if (cause) {
        Ref exc(take_exception());
        PyException_SetCause(exc.get(), cause.release());
        restore_exception(exc.release());
      }
      return false;
    }
    PyErr_Clear();
    Ref zero(PyLong_FromLong(0));
    const int negative = zero ? PyObject_RichCompareBool(when, zero.get(), Py_LT) : -1;
    if (negative < 0) return false;
    *out = negative == 1 ? -HUGE_VAL : HUGE_VAL;
    return true;
  }
  *out = d;
  return true;
}

HandleObject* new_handle(PyObject* loop, Loop* core, PyObject* callback, PyObject* const* args,
                         Py_ssize_t nargs, PyObject* context, Tracking tracking) noexcept {
  HandleObject* h = alloc_from(&HandleType, g_free_handles, g_free_handles_n);
  if (h == nullptr) return nullptr;
  return finish_new(h, fill_handle(h, loop, core, callback, args, nargs, context), tracking);
}

TimerHandleObject* new_timer_handle(PyObject* loop, Loop* core, double when, PyObject* callback,
                                    PyObject* const* args, Py_ssize_t nargs, PyObject* context,
                                    Tracking tracking) noexcept {
  TimerHandleObject* h = alloc_from(&TimerHandleType, g_free_timers, g_free_timers_n);
  if (h == nullptr) return nullptr;
  h->when = when;
  h->scheduled = false;
  return finish_new(h, fill_handle(h, loop, core, callback, args, nargs, context), tracking);
}

void track_handle(HandleObject* h) noexcept {
  auto* obj = reinterpret_cast<PyObject*>(h);
  if (PyObject_GC_IsTracked(obj) != 0) return;
  track_own_context(h);
  PyObject_GC_Track(obj);
}

int visit_queued(HandleObject* h, visitproc visit, void* arg) noexcept {
  auto* obj = reinterpret_cast<PyObject*>(h);
  if (PyObject_GC_IsTracked(obj) != 0) return visit(obj, arg);
  return handle_traverse(obj, visit, arg);
}

void cancel_handle(HandleObject* h) noexcept {
  if (h->cancelled) return;
  // Set first: a heap compaction triggered below looks for cancelled timers.
  h->cancelled = true;
  if (is_timer_handle(reinterpret_cast<PyObject*>(h))) {
    auto* t = static_cast<TimerHandleObject*>(h);
    if (t->scheduled && h->core != nullptr) h->core->timer_cancelled();
  }
  if (h->core != nullptr && h->core->debug() && h->cached_repr == nullptr) {
    // asyncio keeps the repr of a cancelled handle for debugging.
    h->cached_repr = PyObject_CallOneArg(g_hooks.handle_repr, reinterpret_cast<PyObject*>(h));
    if (h->cached_repr == nullptr) PyErr_Clear();
  }
  // While the callback runs, run_handle() holds borrowed pointers to it.
  if (!h->running) release_callback(h);
}

namespace {

// asyncio runs a handle as context.run(callback, *args), whatever `context`
// is: an object that is not a contextvars.Context fails (AttributeError) or
// runs it its own way, as there.
PyObject* run_in_foreign_context(HandleObject* h, PyObject* const* argv, Py_ssize_t nargs) {
  std::vector<PyObject*> stack(static_cast<size_t>(nargs) + 2);
  stack[0] = h->context;
  stack[1] = h->callback;
  for (Py_ssize_t i = 0; i < nargs; ++i) stack[static_cast<size_t>(i) + 2] = argv[i];
  return PyObject_VectorcallMethod(g_str.run, stack.data(), stack.size(), nullptr);
}

}  // namespace

bool run_handle(HandleObject* h) noexcept {
  if (h->callback == nullptr || h->context == nullptr) return true;  // an empty handle
  size_t nargsf = 0;
  PyObject* const* argv = handle_argv(h, &nargsf);
  PyObject* result = nullptr;
  h->running = true;
  if (PyContext_CheckExact(h->context)) {
    if (PyContext_Enter(h->context) == 0) {
      result = PyObject_Vectorcall(h->callback, argv, nargsf, nullptr);
      if (PyContext_Exit(h->context) < 0) Py_CLEAR(result);
    }
  } else {
    result = run_in_foreign_context(h, argv, PyVectorcall_NARGS(nargsf));
  }
  h->running = false;
  bool ok = true;
  if (result != nullptr) {
    Py_DECREF(result);
  } else if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
             PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
    ok = false;
  } else {
    PyObject* exc = take_exception();
    PyObject* r = PyObject_CallFunctionObjArgs(g_hooks.report_callback_error,
                                               reinterpret_cast<PyObject*>(h), exc, nullptr);
    Py_XDECREF(exc);
    ok = r != nullptr;
    Py_XDECREF(r);
  }
  if (h->cancelled && h->callback != nullptr) {
    // cancel() was called by the callback itself; release what it deferred.
    if (!ok) {
      PyObject* exc = take_exception();
      release_callback(h);
      restore_exception(exc);
    } else {
      release_callback(h);
    }
  }
  return ok;
}

bool init_handle_types(PyObject* module) noexcept {
  HandleType.tp_name = "fastloop._core.Handle";
  HandleType.tp_doc =
      "Handle(callback, args, loop, context=None)\n--\n\n"
      "A callback scheduled on a fastloop loop (asyncio.Handle's interface).";
  HandleType.tp_basicsize = sizeof(HandleObject);
  HandleType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE;
  HandleType.tp_new = handle_new;
  HandleType.tp_init = handle_init;
  HandleType.tp_weaklistoffset = offsetof(HandleObject, weakreflist);
  HandleType.tp_dealloc = handle_dealloc;
  HandleType.tp_traverse = handle_traverse;
  HandleType.tp_clear = handle_clear;
  HandleType.tp_repr = handle_repr;
  HandleType.tp_methods = kHandleMethods;
  HandleType.tp_getset = kHandleGetSet;
  if (PyType_Ready(&HandleType) < 0) return false;

  TimerHandleType.tp_name = "fastloop._core.TimerHandle";
  TimerHandleType.tp_doc =
      "TimerHandle(when, callback, args, loop, context=None)\n--\n\n"
      "A callback scheduled for a time (asyncio.TimerHandle's interface).";
  TimerHandleType.tp_basicsize = sizeof(TimerHandleObject);
  TimerHandleType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE;
  TimerHandleType.tp_base = &HandleType;
  TimerHandleType.tp_dealloc = handle_dealloc;
  TimerHandleType.tp_traverse = handle_traverse;
  TimerHandleType.tp_clear = handle_clear;
  TimerHandleType.tp_repr = handle_repr;
  TimerHandleType.tp_richcompare = timer_richcompare;
  TimerHandleType.tp_hash = timer_hash;
  TimerHandleType.tp_methods = kTimerHandleMethods;
  TimerHandleType.tp_getset = kTimerHandleGetSet;
  if (PyType_Ready(&TimerHandleType) < 0) return false;

  if (PyModule_AddObjectRef(module, "Handle", reinterpret_cast<PyObject*>(&HandleType)) < 0) {
    return false;
  }
  return PyModule_AddObjectRef(module, "TimerHandle",
                               reinterpret_cast<PyObject*>(&TimerHandleType)) == 0;
}

}  // namespace fastloop
