// One register_<area>() per bound area, each in cpp/bindings/<area>.cpp;
// module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

namespace fastloop {

void register_loop(pybind11::module_& m);           // loop.cpp: Loop, the loop's methods
void register_hooks(pybind11::module_& m);          // hooks.cpp: _install_hooks, debug counters
void register_stream(pybind11::module_& m);         // stream.cpp: StreamTransport, StreamListener
void register_spawn(pybind11::module_& m);          // spawn.cpp: _spawn
void register_udp(pybind11::module_& m);            // udp.cpp: DatagramTransport
void register_native_method(pybind11::module_& m);  // native_method.cpp: NativeMethod

}  // namespace fastloop
