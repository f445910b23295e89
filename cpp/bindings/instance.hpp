// The C++ object inside a pybind11 instance, without pybind11's generic
// cast: for the fastcall methods added to pybind11 types, whose `self` the
// method descriptor has already type-checked. Python subclasses of our
// classes have one pybind11 base, so the instance layout is always simple.
// Also what every bound transport type needs: fast methods, GC support.
#pragma once

#include <pybind11/pybind11.h>

#include "pyutil.hpp"

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

// Garbage collector support for a pybind11 type whose C++ object holds Python
// references: a transport and its protocol, server and loop form cycles (the
// loop keeps an open transport alive, see owner.hpp). T may have
// clear_references() and finalize().
template <class T>
void enable_gc(PyHeapTypeObject* heap_type) {
  auto* type = &heap_type->ht_type;
  type->tp_flags |= Py_TPFLAGS_HAVE_GC;
  type->tp_traverse = [](PyObject* self, visitproc visit, void* arg) -> int {
    Py_VISIT(Py_TYPE(self));
    const T* cpp = cpp_of<T>(self);
    return cpp != nullptr ? cpp->traverse(visit, arg) : 0;
  };
  type->tp_clear = [](PyObject* self) -> int {
    T* cpp = cpp_of<T>(self);
    if constexpr (requires(T & t) { t.clear_references(); }) {
      if (cpp != nullptr) cpp->clear_references();
    }
    return 0;
  };
  if constexpr (requires(T & t) { t.finalize(); }) {
    type->tp_finalize = [](PyObject* self) {
      T* cpp = cpp_of<T>(self);
      if (cpp == nullptr) return;
      PyObject* pending = take_exception();  // a finalizer keeps the current exception
      cpp->finalize();
      if (PyErr_Occurred()) PyErr_WriteUnraisable(self);
      if (pending != nullptr) restore_exception(pending);
    };
  }
}

template <class F>
constexpr PyCFunction as_cfunction(F f) {
  return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}

}  // namespace fastloop
