// robust_mutex.hpp — taking and releasing the segment's robust mutexes so that a
// corrupted lock word gives an error instead of a hang (engine-internal).
//
// The robust mutex handles the owner that dies: the kernel marks the lock word
// and the next locker gets EOWNERDEAD.  It cannot handle a lock word that a
// stray write made look owned by a thread that never held it: no one will ever
// unlock it and the kernel has nothing to mark, so pthread_mutex_lock would
// wait forever.  lock_robust() therefore waits in slices (a timed lock) and,
// between slices, asks whether the recorded owner could be a real holder; a
// lock whose owner cannot be one and whose word does not change for a whole
// window (stuck_lock_window_s()) is reported as corrupt.  It never unlocks,
// breaks or reinitialises the mutex itself.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstdint>

#if defined(__SANITIZE_THREAD__)
#define SBX_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SBX_TSAN 1
#endif
#endif

// Defined where unlock_robust() is a full memory barrier: glibc on x86-64
// releases the lock word with an atomic exchange, and every x86 atomic RMW is
// one.  Dict::notify_waiters relies on it instead of issuing a fence of its
// own; ThreadSanitizer cannot see that barrier, so TSan builds do not claim it.
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__linux__) && !defined(SBX_TSAN)
#define SBX_UNLOCK_IS_FULL_BARRIER 1
#endif

namespace sbx {

// Initialises a robust, process-shared, error-checking mutex (segment creation).
void init_robust_mutex(pthread_mutex_t* m);

// Takes m.  `holder` is the mutex's holder record in shared memory (see
// Stripe::s_holder_tid): set here to the locking thread's id as the lock word
// shows it, and cleared by unlock_robust().  Returns 0, or EOWNERDEAD when the
// previous owner died (the caller repairs, then calls
// pthread_mutex_consistent).  Throws Error(Errc::Corrupt) naming `what`
// (e.g. "stripe lock", index 3; index < 0 for none) for a lock word that fails
// validation, for a lock whose owner cannot exist (after the stuck-lock
// window), and for every other pthread error, so that none of them aborts or
// hangs the process.
int lock_robust(pthread_mutex_t* m, std::atomic<uint32_t>* holder, const char* what,
                int index);
void unlock_robust(pthread_mutex_t* m, std::atomic<uint32_t>* holder);

// How long (seconds) a waiter watches a lock whose recorded owner cannot be a
// live holder, its lock word unchanged, before raising.  Default 10 s;
// environment variable SHAREDBOX_STUCK_LOCK_TIMEOUT overrides it (read on each
// slow-path wait, so tests can lower it).
double stuck_lock_window_s();

}  // namespace sbx
