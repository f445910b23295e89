// libuv and errno codes to Python exceptions, in one place. libuv's codes on
// Unix are negated errno values; OSError(errno, strerror) picks the subclass
// asyncio's loop would raise (ConnectionRefusedError, PermissionError, ...).
#pragma once

#include "pyutil.hpp"

namespace fastloop {

// Sets the exception for a libuv error code and returns nullptr.
PyObject* set_uv_error(int uv_err) noexcept;

}  // namespace fastloop
