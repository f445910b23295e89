// Debug-build bookkeeping (FASTLOOP_DEBUG): counts of live handles, fd
// watchers and libuv loops, which tests assert balance once loops are closed.
// In a release build the counting compiles to nothing.
#pragma once

namespace fastloop {

struct DebugCounters {
  long handles = 0;      // Handle/TimerHandle objects alive
  long fd_watchers = 0;  // uv_poll_t watchers not yet freed by their close callback
  long uv_loops = 0;     // uv_loop_t initialized and not yet closed
  long uv_handles = 0;   // libuv handles initialized by a HandleOwner and not yet closed
  // Fault injection: microseconds to sleep between arming the loop's timer
  // and polling, so a test can make libuv's clock pass the deadline there.
  long arm_delay_us = 0;
};
extern DebugCounters g_debug_counters;

#ifdef FASTLOOP_DEBUG
inline constexpr bool kDebugBuild = true;
#define FASTLOOP_COUNT(field, delta) (::fastloop::g_debug_counters.field += (delta))
#else
inline constexpr bool kDebugBuild = false;
#define FASTLOOP_COUNT(field, delta) ((void)0)
#endif

}  // namespace fastloop
