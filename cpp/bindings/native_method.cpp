// _core.NativeMethod: a class attribute of a Python transport that serves the
// method of the same name of the transport's native object (`self._native`).
//
// A Python transport holds its native half (a pybind11 object) rather than
// deriving from it: asyncio's transport bases have __slots__, whose layout
// cannot be combined with a pybind11 base. Binding each native method onto
// every instance costs ~72 bytes per method per connection; this descriptor
// costs nothing per instance. It is a method descriptor
// (Py_TPFLAGS_METHOD_DESCRIPTOR), so `transport.write(data)` makes no bound
// object: the interpreter calls it with the transport first, and it calls the
// native method directly. `transport.write` alone gives the native object's
// bound method, and an instance attribute of that name still wins (a test
// may patch one transport's method).
#include <pybind11/pybind11.h>
#include <structmember.h>

#include <cstddef>
#include <memory>
#include <new>

#include "instance.hpp"
#include "pyutil.hpp"
#include "registry.hpp"

namespace fastloop {

namespace {

struct NativeMethodObject {
  PyObject_HEAD PyObject* name;  // the method's name (str), set by __set_name__ or __init__
  vectorcallfunc vectorcall;
};

PyObject* native_of(PyObject* transport) {
  return PyObject_GetAttr(transport, g_str.native);
}

bool check_named(NativeMethodObject* self) {
  if (self->name != nullptr) return true;
  PyErr_SetString(PyExc_TypeError, "NativeMethod has no name (it was never set on a class)");
  return false;
}

PyObject* native_method_call(PyObject* callable, PyObject* const* args, size_t nargsf,
                             PyObject* kwnames) {
  auto* self = reinterpret_cast<NativeMethodObject*>(callable);
  if (!check_named(self)) return nullptr;
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs < 1) {
    PyErr_Format(PyExc_TypeError, "%U() needs the transport as its first argument", self->name);
    return nullptr;
  }
  Ref native(native_of(args[0]));
  if (!native) return nullptr;
  // The transport's slot in `args` becomes the native object's, in a copy
  // (args belongs to the caller).
  constexpr Py_ssize_t kSmall = 8;
  const Py_ssize_t total = nargs + (kwnames != nullptr ? PyTuple_GET_SIZE(kwnames) : 0);
  PyObject* small[kSmall];
  std::unique_ptr<PyObject*[]> large;
  PyObject** call_args = small;
  if (total > kSmall) {
    large.reset(new (std::nothrow) PyObject*[static_cast<size_t>(total)]);
    if (!large) return PyErr_NoMemory();
    call_args = large.get();
  }
  call_args[0] = native.get();
  for (Py_ssize_t i = 1; i < total; ++i) call_args[i] = args[i];
  return PyObject_VectorcallMethod(self->name, call_args, static_cast<size_t>(nargs), kwnames);
}

PyObject* native_method_get(PyObject* descr, PyObject* obj, PyObject* /*type*/) {
  auto* self = reinterpret_cast<NativeMethodObject*>(descr);
  if (obj == nullptr || obj == Py_None) return Py_NewRef(descr);
  if (!check_named(self)) return nullptr;
  Ref native(native_of(obj));
  return native ? PyObject_GetAttr(native.get(), self->name) : nullptr;
}

int native_method_init(PyObject* obj, PyObject* args, PyObject* kwargs) {
  auto* self = reinterpret_cast<NativeMethodObject*>(obj);
  PyObject* name = nullptr;
  static const char* kKeywords[] = {"name", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|U:NativeMethod", const_cast<char**>(kKeywords),
                                   &name)) {
    return -1;
  }
  Py_XSETREF(self->name, Py_XNewRef(name));
  return 0;
}

PyObject* native_method_new(PyTypeObject* type, PyObject* /*args*/, PyObject* /*kwargs*/) {
  PyObject* obj = type->tp_alloc(type, 0);
  if (obj != nullptr) {
    reinterpret_cast<NativeMethodObject*>(obj)->vectorcall = native_method_call;
  }
  return obj;
}

void native_method_dealloc(PyObject* obj) {
  auto* self = reinterpret_cast<NativeMethodObject*>(obj);
  PyTypeObject* type = Py_TYPE(obj);
  Py_CLEAR(self->name);
  type->tp_free(obj);
  Py_DECREF(type);
}

PyObject* native_method_set_name(PyObject* obj, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyUnicode_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "__set_name__(owner, name) takes a class and a str");
    return nullptr;
  }
  auto* self = reinterpret_cast<NativeMethodObject*>(obj);
  if (self->name == nullptr) self->name = Py_NewRef(args[1]);
  Py_RETURN_NONE;
}

PyObject* native_method_repr(PyObject* obj) {
  auto* self = reinterpret_cast<NativeMethodObject*>(obj);
  if (self->name == nullptr) return PyUnicode_FromString("<NativeMethod (unnamed)>");
  return PyUnicode_FromFormat("<NativeMethod %R>", self->name);
}

PyMethodDef kMethods[] = {
    {"__set_name__", as_cfunction(native_method_set_name), METH_FASTCALL,
     "Takes the attribute's name as the method's."},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef kMembers[] = {
    {"__vectorcalloffset__", T_PYSSIZET,
     static_cast<Py_ssize_t>(offsetof(NativeMethodObject, vectorcall)), READONLY, nullptr},
    {"__name__", T_OBJECT, static_cast<Py_ssize_t>(offsetof(NativeMethodObject, name)), READONLY,
     nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

}  // namespace

void register_native_method(pybind11::module_& m) {
  PyType_Slot slots[] = {
      {Py_tp_new, reinterpret_cast<void*>(native_method_new)},
      {Py_tp_init, reinterpret_cast<void*>(native_method_init)},
      {Py_tp_dealloc, reinterpret_cast<void*>(native_method_dealloc)},
      {Py_tp_descr_get, reinterpret_cast<void*>(native_method_get)},
      {Py_tp_call, reinterpret_cast<void*>(PyVectorcall_Call)},
      {Py_tp_repr, reinterpret_cast<void*>(native_method_repr)},
      {Py_tp_methods, kMethods},
      {Py_tp_members, kMembers},
      {Py_tp_doc, const_cast<char*>("NativeMethod(name=None)\n--\n\n"
                                    "A transport's method served by its native object "
                                    "(self._native).")},
      {0, nullptr},
  };
  PyType_Spec spec = {
      "fastloop._core.NativeMethod",
      sizeof(NativeMethodObject),
      0,
      Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
      slots,
  };
  PyObject* type = PyType_FromSpec(&spec);
  if (type == nullptr || PyModule_AddObject(m.ptr(), "NativeMethod", type) < 0) {
    Py_XDECREF(type);
    throw pybind11::error_already_set();
  }
}

}  // namespace fastloop
