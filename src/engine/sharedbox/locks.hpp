// locks.hpp — scoped holders of the segment's robust locks (engine-internal).
// Taking a lock whose previous owner died runs the repair first (see
// Dict::lock_stripe / Dict::lock_alloc), so a holder always sees a consistent
// stripe or allocator.
#pragma once

#include "sharedbox/dict.hpp"

namespace sbx {

class StripeLock {
 public:
  StripeLock(Dict* d, uint32_t i) : d_(d), i_(i) { d_->lock_stripe(i_); }
  ~StripeLock() {
    if (held_) d_->unlock_stripe(i_);
  }
  StripeLock(const StripeLock&) = delete;
  StripeLock& operator=(const StripeLock&) = delete;
  void unlock() {
    d_->unlock_stripe(i_);
    held_ = false;
  }

 private:
  Dict* d_;
  uint32_t i_;
  bool held_ = true;
};

// Every stripe lock, taken in ascending order (the global lock order) and
// released in reverse; if taking one fails, those already held are released.
class AllStripesLock {
 public:
  explicit AllStripesLock(Dict* d) : d_(d) {
    try {
      for (; held_ < d_->stripe_count(); ++held_) d_->lock_stripe(held_);
    } catch (...) {
      release();
      throw;
    }
  }
  ~AllStripesLock() { release(); }
  AllStripesLock(const AllStripesLock&) = delete;
  AllStripesLock& operator=(const AllStripesLock&) = delete;

 private:
  void release() {
    while (held_) d_->unlock_stripe(--held_);
  }
  Dict* d_;
  uint32_t held_ = 0;
};

class AllocLock {
 public:
  explicit AllocLock(Dict* d) : d_(d) { d_->lock_alloc(); }
  ~AllocLock() { d_->unlock_alloc(); }
  AllocLock(const AllocLock&) = delete;
  AllocLock& operator=(const AllocLock&) = delete;

 private:
  Dict* d_;
};

}  // namespace sbx
