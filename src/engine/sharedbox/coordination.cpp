// coordination.cpp — what processes use to coordinate through a dict:
// per-key versions, waiting for a key to change (a futex per stripe), and
// named cross-process locks.  The read-modify-write itself (incr,
// compare_and_set) is Dict::update, in dict.cpp.
#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "sharedbox/crash_points.hpp"
#include "sharedbox/dict.hpp"
#include "sharedbox/locks.hpp"
#include "sharedbox/robust_mutex.hpp"

namespace sbx {
namespace {

constexpr uint32_t kWaitersBit = 0x8000'0000u;
constexpr uint32_t kWaitCountMask = 0x7FFF'FFFFu;

// Sleeps while *word == expected, at most timeout_s; returns on a wake, a
// change, a signal or the timeout.  Not FUTEX_PRIVATE: the word is shared
// between processes.  Returns false if a signal interrupted the sleep.
bool futex_wait(std::atomic<uint32_t>* word, uint32_t expected, double timeout_s) {
  struct timespec ts;
  ts.tv_sec = time_t(timeout_s);
  ts.tv_nsec = long((timeout_s - double(ts.tv_sec)) * 1e9);
  long rc = ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &ts,
                      nullptr, 0);
  return !(rc != 0 && errno == EINTR);
}

void futex_wake_all(std::atomic<uint32_t>* word) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT32_MAX, nullptr,
            nullptr, 0);
}

struct timespec deadline_after(double seconds) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  double whole = std::floor(seconds);
  ts.tv_sec += time_t(whole);
  ts.tv_nsec += long((seconds - whole) * 1e9);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec += 1;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

}  // namespace

// ---------------------------------------------------------------------------
// Waiting (a key's version is Dict::version, in dict.cpp beside contains()).

// Bumps the word and wakes any sleeper.  Recovery calls it for a writer that
// may have died between publishing and notifying; writers call it through
// notify_waiters when a waiter has announced itself.  The seq_cst RMW cannot
// move before the publishing store, so a waiter that finds the word changed
// also finds the new version.
void Dict::notify_change(Stripe& s) {
  uint32_t old = s.s_wait_word.load(std::memory_order_relaxed);
  while (!s.s_wait_word.compare_exchange_weak(old, (old + 1) & kWaitCountMask,
                                              std::memory_order_seq_cst,
                                              std::memory_order_relaxed)) {
  }
  if (old & kWaitersBit) futex_wake_all(&s.s_wait_word);
}

// Called by every writer after publishing and unlocking the stripe.  Most
// writes have no waiter, and then this is one plain load: the RMW of
// notify_change (a full barrier, ~20 cycles a write) is paid only when bit 31
// says someone may sleep.  Why no wake-up is lost: the writer stores its
// slot, then a full barrier, then loads the word; the waiter sets bit 31 with
// an RMW, then a full barrier, then reads the key's version (wait_change).
// Of two such sequences at least one load sees the other's store (the
// store-buffering case that fences forbid), so either the waiter sees the new
// version or the writer sees the bit.  The writer's barrier is the stripe
// unlock where SBX_UNLOCK_IS_FULL_BARRIER (robust_mutex.hpp) says it is one;
// elsewhere an explicit fence takes its place.
void Dict::notify_waiters(Stripe& s) {
#if defined(SBX_UNLOCK_IS_FULL_BARRIER)
  std::atomic_signal_fence(std::memory_order_seq_cst);  // keeps the load after the unlock
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  if (s.s_wait_word.load(std::memory_order_relaxed) & kWaitersBit) notify_change(s);
}

bool Dict::wait_change(const KeyRef& k, uint64_t seen, double timeout_s, uint64_t* now) {
  Stripe& s = stripe(stripe_of(k.hash));
  const struct timespec until = deadline_after(timeout_s);
  for (;;) {
    // Announce (an RMW even when bit 31 is already set: it is this side of
    // the barrier pair that notify_waiters relies on), then look at the
    // version, then sleep only while the word is still what was announced.
    const uint32_t w = s.s_wait_word.fetch_or(kWaitersBit, std::memory_order_seq_cst) | kWaitersBit;
    std::atomic_thread_fence(std::memory_order_seq_cst);
    uint64_t v = 0;
    if (!version(k, &v)) v = 0;
    if (v != seen) {
      *now = v;
      return true;
    }
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    double left = double(until.tv_sec - t.tv_sec) + double(until.tv_nsec - t.tv_nsec) * 1e-9;
    if (left <= 0) return false;
    // A signal ends the wait early, so that the caller can run its handler
    // (Python's Ctrl-C) and decide whether to wait again.
    if (!futex_wait(&s.s_wait_word, w, left)) return false;
  }
}

// ---------------------------------------------------------------------------
// Named locks.

uint32_t Dict::named_lock(const std::string& name) {
  if (name.empty() || name.size() > kLockNameMax || name.find('\0') != std::string::npos)
    throw Error(Errc::InvalidArgument, "a lock name must be 1 to " +
                                           std::to_string(kLockNameMax) +
                                           " UTF-8 bytes without NUL, got " +
                                           std::to_string(name.size()) + " bytes");
  auto find = [&]() -> int {
    for (uint32_t i = 0; i < kNamedLocks; ++i) {
      const NamedLock& l = hdr_->h_locks[i];
      if (l.l_state.load(std::memory_order_acquire) == 1 &&
          std::strncmp(l.l_name, name.c_str(), kLockNameMax + 1) == 0)
        return int(i);
    }
    return -1;
  };
  int found = find();
  if (found >= 0) return uint32_t(found);
  AllocLock claim(this);  // serialises claims; allocator work is never held up long
  found = find();
  if (found >= 0) return uint32_t(found);
  for (uint32_t i = 0; i < kNamedLocks; ++i) {
    NamedLock& l = hdr_->h_locks[i];
    if (l.l_state.load(std::memory_order_relaxed) != 0) continue;
    std::memset(l.l_name, 0, sizeof l.l_name);
    std::memcpy(l.l_name, name.data(), name.size());
    SBX_CRASH_POINT(lock_name_written);  // a claimer that dies here leaves the slot free
    l.l_state.store(1, std::memory_order_release);
    return i;
  }
  throw Error(Errc::TooManyLocks, "the SharedDict '" + name_ + "' already has " +
                                      std::to_string(kNamedLocks) +
                                      " named locks, the most a segment holds; reuse a name");
}

LockResult Dict::lock_named(uint32_t i, double timeout_s) {
  NamedLock& l = hdr_->h_locks[i % kNamedLocks];
  int rc = timeout_s <= 0 ? pthread_mutex_trylock(&l.l_mutex) : [&] {
    struct timespec until = deadline_after(timeout_s);
    return pthread_mutex_timedlock(&l.l_mutex, &until);
  }();
  if (rc == EBUSY || rc == ETIMEDOUT) return LockResult::TimedOut;
  if (rc == EDEADLK)
    throw Error(Errc::LockMisuse, "this thread already holds the lock (it is not reentrant)");
  if (rc != 0 && rc != EOWNERDEAD)
    throw Error(Errc::Corrupt, "named lock " + std::to_string(i) + ": " + std::strerror(rc), rc);
  l.l_holder_tid.store(uint32_t(::syscall(SYS_gettid)), std::memory_order_relaxed);
  if (rc == EOWNERDEAD) {
    pthread_mutex_consistent(&l.l_mutex);
    hdr_->h_recoveries.fetch_add(1, std::memory_order_relaxed);
    l.l_recovered.store(0, std::memory_order_relaxed);
    return LockResult::AcquiredRecovered;
  }
  if (l.l_recovered.exchange(0, std::memory_order_relaxed)) return LockResult::AcquiredRecovered;
  return LockResult::Acquired;
}

void Dict::unlock_named(uint32_t i) {
  NamedLock& l = hdr_->h_locks[i % kNamedLocks];
  uint32_t holder = l.l_holder_tid.load(std::memory_order_relaxed);
  l.l_holder_tid.store(0, std::memory_order_relaxed);
  int rc = pthread_mutex_unlock(&l.l_mutex);
  if (rc == EPERM) {
    l.l_holder_tid.store(holder, std::memory_order_relaxed);  // still the real holder's
    throw Error(Errc::LockMisuse, "release() of a lock this thread does not hold");
  }
  if (rc != 0)
    throw Error(Errc::Corrupt, "named lock " + std::to_string(i) + ": " + std::strerror(rc), rc);
}

bool Dict::named_locked(uint32_t i) {
  NamedLock& l = hdr_->h_locks[i % kNamedLocks];
  int rc = pthread_mutex_trylock(&l.l_mutex);
  if (rc == 0 || rc == EOWNERDEAD) {
    if (rc == EOWNERDEAD) {  // free for the taking; keep the news for the next acquirer
      pthread_mutex_consistent(&l.l_mutex);
      l.l_recovered.store(1, std::memory_order_relaxed);
    }
    pthread_mutex_unlock(&l.l_mutex);
    return false;
  }
  return true;  // EBUSY, or EDEADLK: held by this very thread
}

}  // namespace sbx
