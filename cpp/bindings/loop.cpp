// Binds the loop core as fastloop._core.Loop.
//
// Most methods go through pybind11. The hot entry points (call_soon,
// call_later, call_at, call_soon_threadsafe, time, get_debug, create_future,
// create_task) are METH_FASTCALL descriptors set on the same type: pybind11's
// generic dispatcher costs ~150 ns a call, a fastcall descriptor ~25 ns.
// Binding code converts arguments and nothing else.
#include "loop.hpp"

#include <pybind11/pybind11.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <memory>

#include "errors.hpp"
#include "hooks.hpp"
#include "instance.hpp"
#include "registry.hpp"
#include "sockwait.hpp"

namespace py = pybind11;

namespace fastloop {

namespace {

PyTypeObject* g_loop_type = nullptr;

Loop* core_unchecked(PyObject* obj) noexcept {
  return cpp_of<Loop>(obj);
}

Loop* core_or_raise(PyObject* self) noexcept {
  Loop* loop = core_unchecked(self);
  if (loop == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "fastloop.Loop.__init__() was not called");
  }
  return loop;
}

// Reads the keyword arguments of call_soon & co.: only `context` is known.
bool parse_context(const char* method, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                   PyObject** context) noexcept {
  *context = nullptr;
  if (kwnames == nullptr) return true;
  const Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, i);
    if (key == g_str.context || PyUnicode_Compare(key, g_str.context) == 0) {
      *context = args[nargs + i];
    } else {
      PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", method, key);
      return false;
    }
  }
  return true;
}

bool need_args(const char* method, Py_ssize_t nargs, Py_ssize_t at_least,
               const char* missing) noexcept {
  if (nargs >= at_least) return true;
  PyErr_Format(PyExc_TypeError, "%s() missing required positional argument: '%s'", method, missing);
  return false;
}

PyObject* schedule_timer(PyObject* self, Loop* loop, double when, PyObject* const* args,
                         Py_ssize_t nargs, PyObject* context, const char* method) noexcept {
  if (!loop->check_open()) return nullptr;
  if (loop->debug() && !loop->check_thread()) return nullptr;
  if (!check_callback(args[0], method)) return nullptr;
  TimerHandleObject* h =
      new_timer_handle(self, loop, when, args[0], args + 1, nargs - 1, context, Tracking::kQueued);
  if (h == nullptr) return nullptr;
  loop->push_timer(h);
  return reinterpret_cast<PyObject*>(h);
}

// ---- the fastcall methods ---------------------------------------------------

PyObject* loop_call_soon(PyObject* self, PyObject* const* args, Py_ssize_t nargsf,
                         PyObject* kwnames) {
  Loop* loop = core_or_raise(self);
  if (loop == nullptr) return nullptr;
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context = nullptr;
  if (!parse_context("call_soon", args, nargs, kwnames, &context)) return nullptr;
  if (!need_args("call_soon", nargs, 1, "callback")) return nullptr;
  if (!loop->check_open()) return nullptr;
  if (loop->debug() && !loop->check_thread()) return nullptr;
  if (!check_callback(args[0], "call_soon")) return nullptr;
  HandleObject* h =
      new_handle(self, loop, args[0], args + 1, nargs - 1, context, Tracking::kQueued);
  if (h == nullptr) return nullptr;
  loop->push_ready(h);
  return reinterpret_cast<PyObject*>(h);
}

PyObject* loop_call_soon_threadsafe(PyObject* self, PyObject* const* args, Py_ssize_t nargsf,
                                    PyObject* kwnames) {
  Loop* loop = core_or_raise(self);
  if (loop == nullptr) return nullptr;
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context = nullptr;
  if (!parse_context("call_soon_threadsafe", args, nargs, kwnames, &context)) return nullptr;
  if (!need_args("call_soon_threadsafe", nargs, 1, "callback")) return nullptr;
  if (!loop->check_open()) return nullptr;
  // asyncio checks the callback here only in debug mode.
  if (loop->debug() && !check_callback(args[0], "call_soon_threadsafe")) return nullptr;
  HandleObject* h =
      new_handle(self, loop, args[0], args + 1, nargs - 1, context, Tracking::kQueued);
  if (h == nullptr) return nullptr;
  loop->push_ready_now(h);
  loop->wake_up();
  return reinterpret_cast<PyObject*>(h);
}

PyObject* loop_call_later(PyObject* self, PyObject* const* args, Py_ssize_t nargsf,
                          PyObject* kwnames) {
  Loop* loop = core_or_raise(self);
  if (loop == nullptr) return nullptr;
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context = nullptr;
  if (!parse_context("call_later", args, nargs, kwnames, &context)) return nullptr;
  if (!need_args("call_later", nargs, 2, nargs == 0 ? "delay" : "callback")) return nullptr;
  if (args[0] == Py_None) {
    PyErr_SetString(PyExc_TypeError, "delay must not be None");
    return nullptr;
  }
  // asyncio's call_later is call_at(time() + delay): whatever `float + delay`
  // accepts is a delay (a Fraction, an object with __radd__), nothing else
  // (a Decimal, an object with only __float__); errors name call_at().
  const double now = monotonic_seconds();
  PyObject* delay = args[0];
  double when = 0.0;
  if (PyFloat_CheckExact(delay)) {
    when = now + PyFloat_AS_DOUBLE(delay);
  } else if (PyLong_CheckExact(delay)) {
    const double d = PyLong_AsDouble(delay);
    if (d == -1.0 && PyErr_Occurred()) return nullptr;
    when = now + d;
  } else {
    Ref now_obj(PyFloat_FromDouble(now));
    Ref sum(now_obj ? PyNumber_Add(now_obj.get(), delay) : nullptr);
    // The sum first, then call_at's order: the loop, then the deadline.
    if (!sum || !loop->check_open() || !deadline_of(sum.get(), &when)) return nullptr;
  }
  return schedule_timer(self, loop, when, args + 1, nargs - 1, context, "call_at");
}

PyObject* loop_call_at(PyObject* self, PyObject* const* args, Py_ssize_t nargsf,
                       PyObject* kwnames) {
  Loop* loop = core_or_raise(self);
  if (loop == nullptr) return nullptr;
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context = nullptr;
  if (!parse_context("call_at", args, nargs, kwnames, &context)) return nullptr;
  if (!need_args("call_at", nargs, 2, nargs == 0 ? "when" : "callback")) return nullptr;
  if (args[0] == Py_None) {
    PyErr_SetString(PyExc_TypeError, "when cannot be None");
    return nullptr;
  }
  // asyncio checks the loop before it looks at the deadline.
  if (!loop->check_open()) return nullptr;
  double when = 0.0;
  if (!deadline_of(args[0], &when)) return nullptr;
  return schedule_timer(self, loop, when, args + 1, nargs - 1, context, "call_at");
}

PyObject* loop_time(PyObject* /*self*/, PyObject* /*unused*/) {
  return PyFloat_FromDouble(monotonic_seconds());
}

PyObject* loop_get_debug(PyObject* self, PyObject* /*unused*/) {
  Loop* loop = core_or_raise(self);
  if (loop == nullptr) return nullptr;
  return PyBool_FromLong(loop->debug());
}

PyObject* loop_create_future(PyObject* self, PyObject* /*unused*/) {
  PyObject* stack[1] = {self};
  return PyObject_Vectorcall(g_hooks.future_type, stack, 0, g_str.kw_loop);
}

// create_task(coro, *, name=None, context=None). With a task factory, in
// debug mode or with other keywords (eager_start), the Python method
// _create_task_general does the work.
PyObject* loop_create_task(PyObject* self, PyObject* const* args, Py_ssize_t nargsf,
                           PyObject* kwnames) {
  Loop* loop = core_or_raise(self);
  if (loop == nullptr) return nullptr;
  if (!loop->check_open()) return nullptr;
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* name = Py_None;
  PyObject* context = Py_None;
  bool simple = nargs == 1 && !loop->debug() && loop->task_factory() == nullptr;
  if (simple && kwnames != nullptr) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); ++i) {
      PyObject* key = PyTuple_GET_ITEM(kwnames, i);
      if (PyUnicode_Compare(key, g_str.name) == 0) {
        name = args[nargs + i];
      } else if (PyUnicode_Compare(key, g_str.context) == 0) {
        context = args[nargs + i];
      } else {
        simple = false;
      }
    }
  }
  if (!simple) {
    Ref general(PyObject_GetAttrString(self, "_create_task_general"));
    if (!general) return nullptr;
    return PyObject_Vectorcall(general.get(), args, nargsf, kwnames);
  }
  PyObject* stack[4] = {args[0], self, name, context};
  return PyObject_Vectorcall(g_hooks.task_type, stack, 1, g_str.kw_loop_name_ctx);
}

// _sock_wait(fd, write, sock, method_name, *args): the wait of a sock_*
// operation whose syscall would block (see sockwait.hpp). Returns the future.
PyObject* loop_sock_wait(PyObject* self, PyObject* const* args, Py_ssize_t nargsf,
                         PyObject* kwnames) {
  Loop* loop = core_or_raise(self);
  if (loop == nullptr) return nullptr;
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs < 4 || kwnames != nullptr) {
    PyErr_SetString(PyExc_TypeError, "_sock_wait(fd, write, sock, method_name, *args)");
    return nullptr;
  }
  const long fd = PyLong_AsLong(args[0]);
  if (fd == -1 && PyErr_Occurred()) return nullptr;
  if (fd < 0 || fd > INT_MAX) {
    PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %ld", fd);
    return nullptr;
  }
  const int write = PyObject_IsTrue(args[1]);
  if (write < 0) return nullptr;
  return start_sock_wait(self, loop, static_cast<int>(fd),
                         write != 0 ? Interest::kWrite : Interest::kRead, args[2], args[3],
                         args + 4, nargs - 4);
}

PyMethodDef kFastMethods[] = {
    {"call_soon", as_cfunction(loop_call_soon), METH_FASTCALL | METH_KEYWORDS,
     "call_soon(callback, *args, context=None): run callback in the next iteration."},
    {"call_soon_threadsafe", as_cfunction(loop_call_soon_threadsafe), METH_FASTCALL | METH_KEYWORDS,
     "call_soon_threadsafe(callback, *args, context=None): call_soon from any thread."},
    {"call_later", as_cfunction(loop_call_later), METH_FASTCALL | METH_KEYWORDS,
     "call_later(delay, callback, *args, context=None): run callback after delay seconds."},
    {"call_at", as_cfunction(loop_call_at), METH_FASTCALL | METH_KEYWORDS,
     "call_at(when, callback, *args, context=None): run callback at loop time `when`."},
    {"time", loop_time, METH_NOARGS, "The loop's clock: time.monotonic()."},
    {"get_debug", loop_get_debug, METH_NOARGS, "True in debug mode."},
    {"create_future", loop_create_future, METH_NOARGS, "A new asyncio.Future on this loop."},
    {"_sock_wait", as_cfunction(loop_sock_wait), METH_FASTCALL | METH_KEYWORDS,
     "_sock_wait(fd, write, sock, name, *args): await sock.<name>(*args) once ready."},
    {"create_task", as_cfunction(loop_create_task), METH_FASTCALL | METH_KEYWORDS,
     "create_task(coro, *, name=None, context=None): schedule a coroutine as a Task."},
    {nullptr, nullptr, 0, nullptr},
};

// ---- garbage collector support ----------------------------------------------

int loop_traverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  Loop* loop = core_unchecked(self);
  return loop != nullptr ? loop->traverse(visit, arg) : 0;
}

int loop_clear(PyObject* self) {
  Loop* loop = core_unchecked(self);
  if (loop == nullptr) return 0;
  // Normally Loop.__del__ has closed an abandoned loop before the collector
  // clears it; if it could not (a finalizer runs once), closing here
  // releases the handles' Python owners and so breaks the cycles.
  if (!loop->running() && !loop->close()) PyErr_Clear();
  loop->clear_references();
  return 0;
}

Loop& core(py::handle self) {
  Loop* loop = core_of(self.ptr());
  if (loop == nullptr) throw py::type_error("not an initialized fastloop loop");
  return *loop;
}

HandleObject* make_handle(py::handle self, py::handle callback, const py::tuple& args,
                          py::handle context) {
  HandleObject* h =
      new_handle(self.ptr(), &core(self), callback.ptr(), &PyTuple_GET_ITEM(args.ptr(), 0),
                 PyTuple_GET_SIZE(args.ptr()), context.ptr());
  if (h == nullptr) throw py::error_already_set();
  return h;
}

void watch_fd(py::handle self, int fd, Interest what, py::handle callback, const py::tuple& args,
              py::handle context) {
  HandleObject* h = make_handle(self, callback, args, context);
  // Replaces a sock_* wait on the fd, as asyncio's add_reader replaces it.
  core(self).sock_waits().remove(fd, what);
  const bool ok = core(self).fd_watchers().add(fd, what, h);
  Py_DECREF(h);
  if (!ok) throw py::error_already_set();
}

// ---- health (cpp/health.hpp; the API is fastloop/_health.py) ---------------

int64_t to_ns(double seconds) {
  if (!(seconds >= 0) || seconds > 1e9) throw py::value_error("a duration in seconds was expected");
  return static_cast<int64_t>(std::llround(seconds * 1e9));
}

double to_seconds(int64_t ns) {
  return static_cast<double>(ns) / 1e9;
}

void ok_or_raise(bool ok) {
  if (!ok) throw py::error_already_set();
}

void register_health(py::class_<Loop>& cls) {
  cls.def(
         "_metrics",
         [](py::handle self) {
           Loop& l = core(self);
           ok_or_raise(l.check_open());
           const Loop::Metrics m = l.metrics();
           return py::make_tuple(m.iterations, m.callbacks, m.io_events, m.ready, m.timers, m.fds,
                                 m.transports, to_seconds(m.idle_ns), to_seconds(m.active_ns));
         },
         "(iterations, callbacks, io_events, ready, timers, fds, transports, idle, active)")
      .def(
          "_set_lag_resolution",
          [](py::handle self, double seconds) {
            ok_or_raise(core(self).set_lag_resolution(self.ptr(), to_ns(seconds)));
          },
          "Sample lag every `seconds` (0: stop); the histogram is kept.")
      .def_property_readonly("_lag_running",
                             [](py::handle self) { return core(self).lag_running(); })
      .def(
          "_lag_stats",
          [](py::handle self) {
            const LagHistogram& h = core(self).lag();
            return py::make_tuple(h.count(), to_seconds(h.min()), to_seconds(h.max()),
                                  h.mean() / 1e9, h.stddev() / 1e9);
          },
          "(count, min, max, mean, stddev) of the lag samples, in seconds.")
      .def("_lag_percentile",
           [](py::handle self, double percent) {
             return to_seconds(core(self).lag().percentile(percent));
           })
      .def("_lag_reset", [](py::handle self) { core(self).lag().reset(); })
      .def(
          "_set_slow_threshold",
          [](py::handle self, double seconds) {
            ok_or_raise(core(self).set_slow_threshold(self.ptr(), to_ns(seconds)));
          },
          "Report callbacks that run `seconds` or longer (0: stop).")
      .def(
          "_set_watchdog",
          [](py::handle self, double stall, double resolution, int fd, int signum, bool handler) {
            ok_or_raise(core(self).set_watchdog(self.ptr(), to_ns(stall), to_ns(resolution), fd,
                                                signum, handler));
          },
          "Watch for stalls of `stall` seconds (0: stop), looking every `resolution`.");
}

}  // namespace

Loop* core_of(PyObject* obj) noexcept {
  if (g_loop_type == nullptr || !PyObject_TypeCheck(obj, g_loop_type)) return nullptr;
  return core_unchecked(obj);
}

void register_loop(py::module_& m) {
  py::class_<Loop> cls(m, "Loop", py::custom_type_setup([](PyHeapTypeObject* heap_type) {
                         auto* type = &heap_type->ht_type;
                         type->tp_flags |= Py_TPFLAGS_HAVE_GC;
                         type->tp_traverse = loop_traverse;
                         type->tp_clear = loop_clear;
                       }));
  cls.doc() = "The C++ core of fastloop.Loop (use fastloop.Loop, not this).";
  cls.def(py::init([] {
       auto loop = std::make_unique<Loop>();
       if (!loop->open()) throw py::error_already_set();
       return loop.release();
     }))
      .def(
          "_run",
          [](py::handle self, py::handle step) {
            PyObject* s = step.is_none() ? nullptr : step.ptr();
            if (!core(self).run_forever(self.ptr(), s)) throw py::error_already_set();
          },
          py::arg("step") = py::none(),
          "Run iterations until stop() (run_forever without its Python set-up);\n"
          "step(), when given, runs each iteration instead of the native one.")
      .def(
          "_run_once",
          [](py::handle self) {
            if (!core(self).run_one_iteration(self.ptr())) throw py::error_already_set();
          },
          "One iteration, as asyncio's BaseEventLoop._run_once: poll for I/O\n"
          "(blocking until the next timer or event when nothing is ready), then\n"
          "run the callbacks ready at that moment.")
      .def("stop", [](py::handle self) { core(self).stop(); })
      .def("is_running", [](py::handle self) { return core(self).running(); })
      .def("is_closed", [](py::handle self) { return core(self).closed(); })
      .def("_close",
           [](py::handle self) {
             if (!core(self).close()) throw py::error_already_set();
           })
      .def("_after_fork", [](py::handle self) { core(self).after_fork(); })
      .def("_set_debug", [](py::handle self, bool on) { core(self).set_debug(on); })
      .def(
          "_add_callback",
          [](py::handle self, py::handle handle) {
            if (!PyObject_TypeCheck(handle.ptr(), &HandleType)) {
              throw py::type_error("a fastloop Handle was expected");
            }
            auto* h = reinterpret_cast<HandleObject*>(handle.ptr());
            // It may already be in a queue: only a tracked handle may be in two.
            track_handle(h);
            if (!h->cancelled) core(self).push_ready_now(h);
          },
          "Queue an existing handle, as asyncio's _add_callback.")
      .def("_add_reader_with",
           [](py::handle self, int fd, py::handle callback, const py::tuple& args,
              py::handle context) { watch_fd(self, fd, Interest::kRead, callback, args, context); })
      .def(
          "_add_writer_with",
          [](py::handle self, int fd, py::handle callback, const py::tuple& args,
             py::handle context) { watch_fd(self, fd, Interest::kWrite, callback, args, context); })
      .def(
          "_sock_unwait",
          [](py::handle self, int fd, bool write, py::handle future) {
            return cancel_sock_wait(&core(self), fd, write ? Interest::kWrite : Interest::kRead,
                                    future.ptr());
          },
          "The awaiting task gave up: unregister its _sock_wait if still registered.")
      .def("_remove_reader",
           [](py::handle self, int fd) {
             // A sock_* wait is the fd's reader, as in asyncio.
             const bool waited = core(self).sock_waits().remove(fd, Interest::kRead);
             return core(self).fd_watchers().remove(fd, Interest::kRead) || waited;
           })
      .def("_remove_writer",
           [](py::handle self, int fd) {
             const bool waited = core(self).sock_waits().remove(fd, Interest::kWrite);
             return core(self).fd_watchers().remove(fd, Interest::kWrite) || waited;
           })
      .def_property_readonly("_signal_wakeup_fd",
                             [](py::handle self) { return core(self).signal_wakeup_fd(); })
      .def_property_readonly("_thread_id",
                             [](py::handle self) -> py::object {
                               Loop& l = core(self);
                               if (!l.running()) return py::none();
                               return py::int_(l.thread_id());
                             })
      .def_property(
          "_task_factory",
          [](py::handle self) -> py::object {
            PyObject* f = core(self).task_factory();
            return f != nullptr ? py::reinterpret_borrow<py::object>(f) : py::none();
          },
          [](py::handle self, py::handle factory) {
            core(self).set_task_factory(factory.is_none() ? nullptr : factory.ptr());
          })
      .def_property(
          "_debug", [](py::handle self) { return core(self).debug(); },
          [](py::handle self, bool on) { core(self).set_debug(on); });
  register_health(cls);

  g_loop_type = reinterpret_cast<PyTypeObject*>(cls.ptr());
  add_fast_methods(cls, kFastMethods);
}

}  // namespace fastloop
