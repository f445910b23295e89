#include "timers.hpp"

#include <algorithm>
#include <cmath>

namespace fastloop {

namespace {
constexpr size_t kMinHeapToCompact = 128;
}  // namespace

TimerHeap::~TimerHeap() {
  clear();
}

void TimerHeap::push(TimerHandleObject* h) {
  Py_INCREF(h);
  h->scheduled = true;
  // A NaN deadline is due at once, as in asyncio (where every comparison
  // with it is false); the heap needs a total order, so it sorts first.
  const double key = std::isnan(h->when) ? -HUGE_VAL : h->when;
  heap_.push_back(Entry{key, next_seq_++, h});
  std::push_heap(heap_.begin(), heap_.end(), later);
}

TimerHandleObject* TimerHeap::pop() noexcept {
  std::pop_heap(heap_.begin(), heap_.end(), later);
  TimerHandleObject* h = heap_.back().handle;
  heap_.pop_back();
  h->scheduled = false;
  if (h->cancelled && cancelled_ > 0) --cancelled_;
  return h;
}

void TimerHeap::note_cancelled() noexcept {
  ++cancelled_;
  if (heap_.size() >= kMinHeapToCompact && cancelled_ * 2 > heap_.size()) compact();
}

void TimerHeap::drop_cancelled_top() noexcept {
  while (!heap_.empty() && heap_.front().handle->cancelled) {
    // The DECREF may run Python code that pushes a timer; pop() left the
    // heap consistent before it.
    release_queued(pop());
  }
}

void TimerHeap::compact() noexcept {
  // Detach the cancelled handles first and release them after the heap is
  // rebuilt: a release may run Python code that schedules timers.
  std::vector<TimerHandleObject*> dropped;
  dropped.reserve(cancelled_);
  auto live_end = std::remove_if(heap_.begin(), heap_.end(), [&](const Entry& e) {
    if (!e.handle->cancelled) return false;
    e.handle->scheduled = false;
    dropped.push_back(e.handle);
    return true;
  });
  heap_.erase(live_end, heap_.end());
  std::make_heap(heap_.begin(), heap_.end(), later);
  cancelled_ = 0;
  for (TimerHandleObject* h : dropped) release_queued(h);
}

void TimerHeap::clear() noexcept {
  while (!heap_.empty()) {
    std::vector<Entry> old;
    old.swap(heap_);
    cancelled_ = 0;
    for (const Entry& e : old) {
      e.handle->scheduled = false;
      release_queued(e.handle);
    }
  }
}

int TimerHeap::traverse(visitproc visit, void* arg) const {
  for (const Entry& e : heap_) {
    if (const int r = visit_queued(e.handle, visit, arg); r != 0) return r;
  }
  return 0;
}

}  // namespace fastloop
