// The C++ object inside a pybind11 instance, without pybind11's generic
// cast: for the fastcall methods added to pybind11 types, whose `self` the
// method descriptor has already type-checked. Python subclasses of our
// classes have one pybind11 base, so the instance layout is always simple.
#pragma once

#include <pybind11/pybind11.h>

namespace fastloop {

template <class T>
T* cpp_of(PyObject* self) noexcept {
  auto* inst = reinterpret_cast<pybind11::detail::instance*>(self);
  if (!inst->simple_layout) return nullptr;
  return static_cast<T*>(inst->simple_value_holder[0]);  // nullptr before __init__
}

// Adds METH_FASTCALL methods to a pybind11 type as method descriptors.
inline void add_fast_methods(pybind11::handle cls, PyMethodDef* defs) {
  auto* type = reinterpret_cast<PyTypeObject*>(cls.ptr());
  for (PyMethodDef* def = defs; def->ml_name != nullptr; ++def) {
    PyObject* descr = PyDescr_NewMethod(type, def);
    const int r = descr == nullptr ? -1 : PyObject_SetAttrString(cls.ptr(), def->ml_name, descr);
    Py_XDECREF(descr);
    if (r < 0) throw pybind11::error_already_set();
  }
}

template <class F>
constexpr PyCFunction as_cfunction(F f) {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}

}  // namespace fastloop
