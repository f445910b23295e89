#include "errors.hpp"

#include <uv.h>

#include <cstring>

namespace fastloop {

PyObject* set_uv_error(int uv_err) noexcept {
  if (uv_err == UV_ENOMEM) return PyErr_NoMemory();
  // On Unix every libuv code but the UV_EAI_* family is -errno.
  const int code = -uv_err;
  Ref args(Py_BuildValue("(is)", code, std::strerror(code)));
  if (args) {
    Ref exc(PyObject_Call(PyExc_OSError, args.get(), nullptr));
    if (exc) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.get())), exc.get());
  }
  return nullptr;
}

}  // namespace fastloop
