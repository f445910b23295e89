// One register_<area>() per bound area; module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

namespace fastloop {

void register_loop(pybind11::module_& m);
void register_hooks(pybind11::module_& m);
void register_stream(pybind11::module_& m);
void register_spawn(pybind11::module_& m);

}  // namespace fastloop
