// Binds DatagramTransport (fastloop._core). The Python transport in
// fastloop/_datagram.py holds one and binds its hot methods onto itself.
#include "udp.hpp"

#include <pybind11/pybind11.h>

#include "instance.hpp"
#include "registry.hpp"

namespace py = pybind11;

namespace fastloop {

namespace {

DatagramTransport* checked(PyObject* self) {
  auto* t = cpp_of<DatagramTransport>(self);
  if (t == nullptr) PyErr_SetString(PyExc_TypeError, "DatagramTransport.__init__() was not called");
  return t;
}

DatagramTransport& transport(py::handle self) {
  DatagramTransport* t = checked(self.ptr());
  if (t == nullptr) throw py::error_already_set();
  return *t;
}

void check(bool ok) {
  if (!ok) throw py::error_already_set();
}

PyObject* or_none(PyObject* obj) {
  return obj != nullptr ? obj : Py_None;
}

// transport.sendto(data, addr=None): the hot path, a fastcall method.
PyObject* transport_sendto(PyObject* self, PyObject* const* args, Py_ssize_t nargsf,
                           PyObject* kwnames) {
  DatagramTransport* t = checked(self);
  if (t == nullptr) return nullptr;
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* data = nargs > 0 ? args[0] : nullptr;
  PyObject* addr = nargs > 1 ? args[1] : nullptr;
  const Py_ssize_t nkw = kwnames != nullptr ? PyTuple_GET_SIZE(kwnames) : 0;
  if (nargs > 2) {
    PyErr_Format(PyExc_TypeError,
                 "sendto() takes from 1 to 2 positional arguments but %zd were given", nargs);
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, i);
    PyObject** slot = nullptr;
    if (PyUnicode_CompareWithASCIIString(key, "data") == 0) {
      slot = &data;
    } else if (PyUnicode_CompareWithASCIIString(key, "addr") == 0) {
      slot = &addr;
    } else {
      PyErr_Format(PyExc_TypeError, "sendto() got an unexpected keyword argument %R", key);
      return nullptr;
    }
    if (*slot != nullptr) {
      PyErr_Format(PyExc_TypeError, "sendto() got multiple values for argument %R", key);
      return nullptr;
    }
    *slot = args[nargs + i];
  }
  if (data == nullptr) {
    PyErr_SetString(PyExc_TypeError, "sendto() missing 1 required positional argument: 'data'");
    return nullptr;
  }
  if (!t->sendto(data, addr != nullptr ? addr : Py_None)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* transport_is_closing(PyObject* self, PyObject* /*unused*/) {
  DatagramTransport* t = checked(self);
  return t == nullptr ? nullptr : PyBool_FromLong(t->is_closing());
}

PyObject* transport_is_reading(PyObject* self, PyObject* /*unused*/) {
  DatagramTransport* t = checked(self);
  return t == nullptr ? nullptr : PyBool_FromLong(t->is_reading());
}

PyObject* transport_get_write_buffer_size(PyObject* self, PyObject* /*unused*/) {
  DatagramTransport* t = checked(self);
  return t == nullptr ? nullptr : PyLong_FromSize_t(t->write_buffer_size());
}

// The handles the poll queues when the socket is ready (see udp.hpp).
PyObject* transport_read_ready(PyObject* self, PyObject* /*unused*/) {
  DatagramTransport* t = checked(self);
  if (t == nullptr || !t->read_ready()) return nullptr;
  Py_RETURN_NONE;
}

PyObject* transport_sendto_ready(PyObject* self, PyObject* /*unused*/) {
  DatagramTransport* t = checked(self);
  if (t == nullptr || !t->write_ready()) return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef kFastMethods[] = {
    {"sendto", as_cfunction(transport_sendto), METH_FASTCALL | METH_KEYWORDS,
     "sendto(data, addr=None): send one datagram, queueing it if the socket would block."},
    {"is_closing", transport_is_closing, METH_NOARGS, "True once close() or abort() was called."},
    {"is_reading", transport_is_reading, METH_NOARGS, "True while reading is not paused."},
    {"get_write_buffer_size", transport_get_write_buffer_size, METH_NOARGS,
     "Bytes queued (with a header per datagram on 3.13) and not yet sent."},
    {"_read_ready", transport_read_ready, METH_NOARGS,
     "Read what the socket has (the reader's handle calls it)."},
    {"_sendto_ready", transport_sendto_ready, METH_NOARGS,
     "Send what is queued (the writer's handle calls it)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

void register_udp(py::module_& m) {
  py::class_<DatagramTransport> t(m, "DatagramTransport",
                                  py::custom_type_setup(enable_gc<DatagramTransport>));
  t.doc() = "The native half of a datagram transport (fastloop/_datagram.py).";
  t.def(py::init([](py::handle loop) {
     if (core_of(loop.ptr()) == nullptr) throw py::type_error("a fastloop loop was expected");
     return new DatagramTransport(loop.ptr());
   }))
      .def(
          "_open",
          [](py::handle self, py::handle owner, py::handle sock, py::handle protocol,
             py::handle address, bool connected, size_t header_size, bool sends_empty) {
            check(transport(self).open(self.ptr(), owner.ptr(), sock.ptr(), protocol.ptr(),
                                       address.ptr(), connected, header_size, sends_empty));
          },
          "Watch the socket; `owner` is the Python transport protocols see.")
      .def("close", [](py::handle self) { check(transport(self).close()); })
      .def("abort", [](py::handle self) { check(transport(self).abort()); })
      .def("_force_close",
           [](py::handle self, py::handle exc) {
             check(transport(self).force_close(exc.is_none() ? nullptr : exc.ptr()));
           })
      .def("pause_reading", [](py::handle self) { check(transport(self).pause_reading()); })
      .def("resume_reading", [](py::handle self) { check(transport(self).resume_reading()); })
      .def("_start_reading", [](py::handle self) { check(transport(self).start_reading()); })
      .def("set_protocol",
           [](py::handle self, py::handle protocol) {
             check(transport(self).set_protocol(protocol.ptr()));
           })
      .def("get_protocol",
           [](py::handle self) {
             return py::reinterpret_borrow<py::object>(or_none(transport(self).protocol()));
           })
      .def(
          "_set_limits",
          [](py::handle self, py::handle high, py::handle low) {
            check(transport(self).set_write_buffer_limits(high.ptr(), low.ptr()));
          },
          "Use the write-buffer limits asyncio's _set_write_buffer_limits computed.")
      .def("_protocol_paused", [](py::handle self) { return transport(self).protocol_paused(); })
      .def("_reader_polling", [](py::handle self) { return transport(self).reader_polling(); })
      .def("_writer_polling", [](py::handle self) { return transport(self).writer_polling(); })
      .def("_call_connection_lost",
           [](py::handle self, py::handle exc) {
             check(transport(self).call_connection_lost(exc.is_none() ? nullptr : exc.ptr()));
           })
      .def(
          "_stop", [](py::handle self) { transport(self).finalize(); },
          "Stop watching the socket (before the socket is closed).");
  add_fast_methods(t, kFastMethods);
}

}  // namespace fastloop
