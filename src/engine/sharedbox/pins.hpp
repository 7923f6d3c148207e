// pins.hpp — the process-local side of pins (engine-internal): which pin
// slot of a segment this process owns, and how many views share each entry.
// The shared side (PinSlot, PinEntry) is described in layout.hpp.
#pragma once

#include <pthread.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace sbx {

// One per Dict (per mapping).  Guarded by `m`, which is taken before any
// shared lock (lock order: ProcessPins::m, stripes, allocator).
struct ProcessPins {
  std::mutex m;
  uint32_t pid = 0;  // the process these fields describe; a forked child starts over
  int slot = -1;     // our PinSlot, -1 until the first pin
  std::vector<uint32_t> free_entries;  // entries of our slot that are 0
  std::vector<uint64_t> views;         // per entry: Pin objects that hold it
  // Published records this process pins, so that views of the same record
  // share one entry: record offset -> entry.
  std::unordered_map<uint64_t, uint32_t> entry_of;
};

// The keeper: one thread per process that holds the p_mutex of every pin
// slot the process owns, for as long as the process lives.  A robust mutex
// belongs to the thread that locked it and is released when that thread
// ends, so the mutex cannot be held by whichever Python thread happened to
// take the first view.  The keeper only ever trylocks, so it never blocks.
namespace keeper {
int trylock(pthread_mutex_t* m);       // 0, EOWNERDEAD, EBUSY, ...
void make_consistent(pthread_mutex_t* m);
void unlock(pthread_mutex_t* m);
}  // namespace keeper

}  // namespace sbx
