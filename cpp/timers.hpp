// The loop's timers: a binary heap of TimerHandles ordered by (when, order of
// scheduling), served by ONE uv_timer_t that the loop arms at the earliest
// deadline before it blocks. Cancelled timers stay in the heap and are
// dropped lazily: when they reach the top, or all at once when they make up
// most of the heap.
#pragma once

#include <cstdint>
#include <vector>

#include "handles.hpp"

namespace fastloop {

class TimerHeap {
 public:
  TimerHeap() = default;
  TimerHeap(const TimerHeap&) = delete;
  TimerHeap& operator=(const TimerHeap&) = delete;
  ~TimerHeap();

  // Takes a new reference to `h` and marks it scheduled.
  void push(TimerHandleObject* h);

  bool empty() const noexcept { return heap_.empty(); }
  size_t size() const noexcept { return heap_.size(); }
  // Cancelled timers still in the heap (dropped lazily).
  size_t cancelled_count() const noexcept { return cancelled_; }
  double earliest() const noexcept { return heap_.front().when; }

  // Removes the earliest timer and returns the heap's reference to it.
  TimerHandleObject* pop() noexcept;

  // A scheduled timer was cancelled. When cancelled timers make up more than
  // half of a large heap, they are all removed at once (amortized O(1)).
  void note_cancelled() noexcept;

  // Drops cancelled timers from the top so earliest() is a live deadline.
  void drop_cancelled_top() noexcept;

  // Releases every timer (loop close). Python code run by the releases may
  // schedule new timers; those are released too.
  void clear() noexcept;

  int traverse(visitproc visit, void* arg) const;

 private:
  struct Entry {
    double when;
    uint64_t seq;
    TimerHandleObject* handle;
  };
  // std::push_heap keeps the "largest" on top; this makes it the earliest.
  static bool later(const Entry& a, const Entry& b) noexcept {
    return a.when > b.when || (a.when == b.when && a.seq > b.seq);
  }
  void compact() noexcept;

  std::vector<Entry> heap_;
  uint64_t next_seq_ = 0;
  size_t cancelled_ = 0;
};

}  // namespace fastloop
