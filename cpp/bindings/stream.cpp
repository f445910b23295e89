// Binds StreamTransport and StreamListener (fastloop._core). The Python
// classes in fastloop/_transports.py derive from these.
#include "stream.hpp"

#include <pybind11/pybind11.h>

#include "errors.hpp"
#include "instance.hpp"
#include "registry.hpp"
#include "server.hpp"

namespace py = pybind11;

namespace fastloop {

namespace {

StreamTransport& transport(py::handle self) {
  auto* t = cpp_of<StreamTransport>(self.ptr());
  if (t == nullptr) throw py::type_error("StreamTransport.__init__() was not called");
  return *t;
}

StreamListener& listener(py::handle self) {
  auto* l = cpp_of<StreamListener>(self.ptr());
  if (l == nullptr) throw py::type_error("StreamListener.__init__() was not called");
  return *l;
}

void check(bool ok) {
  if (!ok) throw py::error_already_set();
}

StreamKind kind_of(const std::string& kind) {
  if (kind == "tcp") return StreamKind::kTcp;
  if (kind == "pipe") return StreamKind::kPipe;
  throw py::value_error("kind must be 'tcp' or 'pipe'");
}

// transport.write(data): the hot path, a fastcall method.
PyObject* transport_write(PyObject* self, PyObject* const* args, Py_ssize_t nargsf,
                          PyObject* kwnames) {
  auto* t = cpp_of<StreamTransport>(self);
  if (t == nullptr) {
    PyErr_SetString(PyExc_TypeError, "StreamTransport.__init__() was not called");
    return nullptr;
  }
  if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != nullptr) {
    PyErr_SetString(PyExc_TypeError, "write() takes exactly one argument (data)");
    return nullptr;
  }
  if (!t->write(args[0])) return nullptr;
  Py_RETURN_NONE;
}

StreamTransport* checked(PyObject* self) {
  auto* t = cpp_of<StreamTransport>(self);
  if (t == nullptr) PyErr_SetString(PyExc_TypeError, "StreamTransport.__init__() was not called");
  return t;
}

// The methods protocols and asyncio's streams and sslproto call per message.
PyObject* transport_is_closing(PyObject* self, PyObject* /*unused*/) {
  StreamTransport* t = checked(self);
  return t == nullptr ? nullptr : PyBool_FromLong(t->is_closing());
}

PyObject* transport_is_reading(PyObject* self, PyObject* /*unused*/) {
  StreamTransport* t = checked(self);
  return t == nullptr ? nullptr : PyBool_FromLong(t->is_reading());
}

PyObject* transport_get_write_buffer_size(PyObject* self, PyObject* /*unused*/) {
  StreamTransport* t = checked(self);
  return t == nullptr ? nullptr : PyLong_FromSize_t(t->write_buffer_size());
}

PyObject* transport_pause_reading(PyObject* self, PyObject* /*unused*/) {
  StreamTransport* t = checked(self);
  if (t == nullptr) return nullptr;
  t->pause_reading();
  Py_RETURN_NONE;
}

PyObject* transport_resume_reading(PyObject* self, PyObject* /*unused*/) {
  StreamTransport* t = checked(self);
  if (t == nullptr || !t->resume_reading()) return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef kTransportFastMethods[] = {
    {"write", as_cfunction(transport_write), METH_FASTCALL | METH_KEYWORDS,
     "write(data): send bytes-like data, buffering what cannot go out at once."},
    {"is_closing", transport_is_closing, METH_NOARGS, "True once close() or abort() was called."},
    {"is_reading", transport_is_reading, METH_NOARGS, "True while reading is not paused."},
    {"get_write_buffer_size", transport_get_write_buffer_size, METH_NOARGS,
     "Bytes written but not yet handed to the kernel."},
    {"pause_reading", transport_pause_reading, METH_NOARGS, "Stop calling data_received."},
    {"resume_reading", transport_resume_reading, METH_NOARGS, "Call data_received again."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

void register_stream(py::module_& m) {
  py::class_<StreamTransport> t(m, "StreamTransport",
                                py::custom_type_setup(enable_gc<StreamTransport>));
  t.doc() = "The native half of a TCP or Unix stream transport, or of a pipe transport.";
  t.def(py::init([](py::handle loop, const std::string& kind) {
     if (core_of(loop.ptr()) == nullptr) throw py::type_error("a fastloop loop was expected");
     return new StreamTransport(loop.ptr(), kind_of(kind));
   }))
      .def(
          "_set_transport",
          [](py::handle self, py::handle owner) { transport(self).set_transport(owner.ptr()); },
          "The Python transport that protocols and error reports see.")
      .def(
          "_open", [](py::handle self, int fd) { check(transport(self).open(self.ptr(), fd)); },
          "Take over the connected fd (libuv closes it from here).")
      .def("writelines",
           [](py::handle self, py::handle data) { check(transport(self).writelines(data.ptr())); })
      .def("write_eof", [](py::handle self) { check(transport(self).write_eof()); })
      .def("can_write_eof",
           [](py::handle self) {
             transport(self);  // checks that it is one
             return true;      // a socket can always half-close
           })
      .def("close", [](py::handle self) { check(transport(self).close()); })
      .def("abort", [](py::handle self) { check(transport(self).abort()); })
      .def("_force_close",
           [](py::handle self, py::handle exc) {
             check(transport(self).force_close(exc.is_none() ? nullptr : exc.ptr()));
           })
      .def("set_protocol",
           [](py::handle self, py::handle protocol) {
             check(transport(self).set_protocol(protocol.ptr()));
           })
      .def("get_protocol",
           [](py::handle self) -> py::object {
             PyObject* p = transport(self).protocol();
             return p != nullptr ? py::reinterpret_borrow<py::object>(p) : py::none();
           })
      .def(
          "_set_limits",
          [](py::handle self, py::handle high, py::handle low) {
            check(transport(self).set_write_buffer_limits(high.ptr(), low.ptr()));
          },
          "Use the write-buffer limits asyncio's _set_write_buffer_limits computed.")
      .def("_start_reading", [](py::handle self) { check(transport(self).start_reading()); })
      .def("_deliver_eof", [](py::handle self) { transport(self).deliver_eof(); })
      .def("_set_pipe_mode",
           [](py::handle self, bool write_only, int pipe_fd) {
             transport(self).set_pipe_mode(write_only, pipe_fd);
           })
      .def("_call_connection_lost",
           [](py::handle self, py::handle exc) {
             check(transport(self).call_connection_lost(exc.is_none() ? nullptr : exc.ptr()));
           })
      .def("_fileno", [](py::handle self) { return transport(self).fileno(); })
      .def("_unclosed", [](py::handle self) { return transport(self).unclosed(); })
      .def("_make_empty_waiter",
           [](py::handle self) {
             PyObject* fut = transport(self).make_empty_waiter();
             if (fut == nullptr) throw py::error_already_set();
             return py::reinterpret_steal<py::object>(fut);
           })
      .def("_reset_empty_waiter", [](py::handle self) { transport(self).reset_empty_waiter(); })
      .def("_protocol_paused", [](py::handle self) { return transport(self).protocol_paused(); })
      .def("_set_socket",
           [](py::handle self, py::handle sock) { transport(self).set_socket(sock.ptr()); })
      .def("_set_server",
           [](py::handle self, py::handle server) {
             transport(self).set_server(server.is_none() ? nullptr : server.ptr());
           })
      .def_property_readonly("_loop", [](py::handle self) -> py::object {
        return py::reinterpret_borrow<py::object>(transport(self).py_loop());
      });
  add_fast_methods(t, kTransportFastMethods);

  py::class_<StreamListener> l(m, "StreamListener",
                               py::custom_type_setup(enable_gc<StreamListener>));
  l.doc() = "The native half of a listening TCP or Unix socket.";
  l.def(py::init([](py::handle loop, const std::string& kind) {
     if (core_of(loop.ptr()) == nullptr) throw py::type_error("a fastloop loop was expected");
     return new StreamListener(loop.ptr(), kind_of(kind));
   }))
      .def(
          "_open",
          [](py::handle self, int fd, int backlog) {
            check(listener(self).open(self.ptr(), fd, backlog));
          },
          "Listen on a duplicate of the listening socket's fd.")
      .def("_accept",
           [](py::handle self, py::handle into) {
             auto* t = cpp_of<StreamTransport>(into.ptr());
             if (t == nullptr) throw py::type_error("a StreamTransport was expected");
             check(listener(self).accept(t, into.ptr()));
           })
      .def("_close", [](py::handle self) { listener(self).close(); })
      .def("_is_closed", [](py::handle self) { return listener(self).closed(); });
}

}  // namespace fastloop
