// robust_mutex.cpp — see robust_mutex.hpp for what this guards against.
//
// What a waiter may conclude from a lock word it cannot take (glibc's robust
// mutex, Linux's robust-futex ABI):
//   * the word's low 30 bits (FUTEX_TID_MASK) are the owner's thread id as the
//     owner's own PID namespace numbers it; FUTEX_OWNER_DIED means the kernel
//     found the owner dead (the next locker gets EOWNERDEAD); FUTEX_WAITERS
//     only says someone sleeps on it;
//   * a real owner that dies is always marked by the kernel (it walks the
//     owner's robust list at exit), so a word that stays unmarked while naming
//     a thread that does not exist was not written by a real owner;
//   * a real owner records itself in the holder field right after taking the
//     lock, so a word naming a thread that is not the recorded holder, for a
//     whole window, was not written by a real owner either (this catches a
//     corrupted id that happens to name a live, unrelated thread, e.g. 1).
// Reading the word races with its owner; that is harmless because every
// conclusion needs the same evidence on every sample across the window.
#include "sharedbox/robust_mutex.hpp"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

#include <chrono>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <linux/futex.h>  // FUTEX_WAITERS, FUTEX_OWNER_DIED, FUTEX_TID_MASK
#endif

#include "sharedbox/errors.hpp"
#include "sharedbox/racy.hpp"

// The checks read glibc's mutex fields (__lock, __kind), which are part of its
// public pthread_mutex_t definition and of its ABI; elsewhere only the
// pthread error codes are checked and a stuck lock is not detected.
#if defined(__GLIBC__) && defined(__linux__)
#define SBX_GLIBC_MUTEX 1
#else
#define SBX_GLIBC_MUTEX 0
#endif

// pthread_mutex_clocklock (glibc >= 2.30) takes a monotonic deadline, so a
// wall-clock jump cannot stretch or skip a slice.  ThreadSanitizer's runtime in
// GCC 12 does not intercept it (it would not see the lock taken and would
// report every critical section), so TSan builds (SBX_TSAN, robust_mutex.hpp)
// use pthread_mutex_timedlock.
#if SBX_GLIBC_MUTEX && __GLIBC_PREREQ(2, 30) && !defined(SBX_TSAN)
#define SBX_CLOCKLOCK 1
#else
#define SBX_CLOCKLOCK 0
#endif

namespace sbx {
namespace {

constexpr double kDefaultWindowS = 10.0;

std::string lock_name(const char* what, int index) {
  std::string s = what;
  if (index >= 0) s += " " + std::to_string(index);
  return s;
}

[[noreturn]] void throw_unusable(const char* what, int index, int rc) {
  std::string msg = lock_name(what, index) + " is unusable (" + std::strerror(rc) + ")";
  if (rc == EDEADLK) msg += ": its lock word names this thread, which does not hold it";
  throw Error(Errc::Corrupt, msg + "; the segment is corrupt and must be recreated", rc);
}

#if SBX_GLIBC_MUTEX
// glibc keeps two "elision" hint bits in __kind (PTHREAD_MUTEX_ELISION_NP and
// PTHREAD_MUTEX_NO_ELISION_NP, 0x100 and 0x200 in its pthreadP.h) that a
// differently configured process could set; they do not change the protocol.
constexpr int kElisionBits = 0x300;

uint32_t lock_word(pthread_mutex_t* m) {
  return uint32_t(__atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED));
}

// The __kind every sharedbox mutex has: computed once, when the library is
// loaded, from a mutex initialised exactly as init_robust_mutex does, rather
// than hard-coding glibc's encoding.  (A function-local static would cost
// every lock its guard check.)
int kind_of_a_new_mutex() {
  pthread_mutex_t probe;
  init_robust_mutex(&probe);
  int k = probe.__data.__kind;
  pthread_mutex_destroy(&probe);
  return k;
}
const int kExpectedKind = kind_of_a_new_mutex();

[[noreturn, gnu::cold, gnu::noinline]] void throw_bad_kind(int kind, const char* what,
                                                          int index) {
  throw Error(Errc::Corrupt, lock_name(what, index) + " has a corrupted type field (" +
                                 std::to_string(kind) + ", expected " +
                                 std::to_string(kExpectedKind) +
                                 "); the segment must be recreated");
}

// A flipped type bit turns the mutex into another kind, for which glibc may
// return EINVAL, use a private futex (waiters in other processes are never
// woken) or take the priority-inheritance path (which can assert() on an owner
// that does not exist).  So the type is checked before every pthread call.
inline void check_kind(pthread_mutex_t* m, const char* what, int index) {
  int kind = __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED);
  if ((kind ^ kExpectedKind) & ~kElisionBits) throw_bad_kind(kind, what, index);
}

// Whether a thread with this id may exist in our PID namespace.  kill(tid, 0)
// finds any thread, not only process leaders, on the kernels we know; /proc/<tid>
// is asked as well in case a kernel answers ESRCH for non-leader threads.  Any
// answer other than a clear "no such thread" counts as alive.
bool thread_may_exist(uint32_t tid) {
  if (tid == 0) return false;
  if (::kill(pid_t(tid), 0) == 0 || errno != ESRCH) return true;
  char path[32];
  snprintf(path, sizeof path, "/proc/%u", tid);
  struct stat st;
  if (::stat(path, &st) == 0) return true;
  return errno != ENOENT;
}

int timed_lock(pthread_mutex_t* m, double slice_s) {
  struct timespec ts;
#if SBX_CLOCKLOCK
  clock_gettime(CLOCK_MONOTONIC, &ts);
#else
  clock_gettime(CLOCK_REALTIME, &ts);
#endif
  int64_t ns = int64_t(slice_s * 1e9);
  ts.tv_sec += time_t(ns / 1000000000);
  ts.tv_nsec += long(ns % 1000000000);
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec += 1;
    ts.tv_nsec -= 1000000000;
  }
#if SBX_CLOCKLOCK
  return pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
#else
  return pthread_mutex_timedlock(m, &ts);
#endif
}

// Before sleeping, a waiter spins a little: every critical section in the
// engine is short (a slot store, a bitmap update), while a futex sleep and
// wake-up costs microseconds on each side.  Without this, two processes
// writing disjoint keys on a 16-core machine did 0.3x the work of one, both
// sleeping on the allocator lock in turn.  The spin reads the word and only
// retries the (cache-line stealing) trylock once the word looks free.
constexpr int kSpinTries = 8;
constexpr int kSpinPauses = 64;  // about a microsecond on current x86

int lock_spinning(pthread_mutex_t* m) {
  int rc = EBUSY;
  for (int t = 0; t < kSpinTries && rc == EBUSY; ++t) {
    for (int i = 0; i < kSpinPauses && lock_word(m) != 0; ++i) cpu_relax();
    rc = pthread_mutex_trylock(m);
  }
  return rc;
}

// The contended path: wait in slices; between slices decide whether the lock
// is stuck (see the top of this file).
int lock_slow(pthread_mutex_t* m, std::atomic<uint32_t>* holder, const char* what, int index) {
  const double window = stuck_lock_window_s();
  double slice = window / 4;
  if (slice > 1.0) slice = 1.0;
  if (slice < 0.0005) slice = 0.0005;
  using clock = std::chrono::steady_clock;
  bool watching = false;
  uint32_t watched = 0;
  clock::time_point since;
  for (;;) {
    int rc = timed_lock(m, slice);
    if (rc != ETIMEDOUT) return rc;
    check_kind(m, what, index);
    uint32_t w = lock_word(m);
    uint32_t tid = w & FUTEX_TID_MASK;
    // OWNER_DIED or a free word: the next try takes it (a lost wake-up, e.g.
    // after a corrupted word was rewritten, costs one slice).
    bool free_or_dead = w == 0 || (w & FUTEX_OWNER_DIED);
    bool suspect = !free_or_dead &&
                   (tid == 0 || holder->load(std::memory_order_relaxed) != tid ||
                    !thread_may_exist(tid));
    uint32_t key = w & ~uint32_t(FUTEX_WAITERS);  // waiters come and go
    if (!suspect) {
      watching = false;
      continue;
    }
    clock::time_point now = clock::now();
    if (!watching || key != watched) {
      watching = true;
      watched = key;
      since = now;
      continue;
    }
    double waited = std::chrono::duration<double>(now - since).count();
    if (waited < window) continue;
    std::string why = tid == 0 ? "names no owner"
                      : !thread_may_exist(tid)
                          ? "names thread " + std::to_string(tid) + ", which does not exist"
                          : "names thread " + std::to_string(tid) +
                                ", which is not recorded as its holder";
    char facts[64];
    snprintf(facts, sizeof facts, "its lock word (0x%08x) ", w);
    char secs[32];
    snprintf(secs, sizeof secs, "%.1f s", waited);
    throw Error(Errc::Corrupt,
                lock_name(what, index) + " is stuck: " + facts + why +
                    " and has not changed for " + secs + "; the segment is corrupt and must be recreated (a holder in another "
                    "PID namespace that holds it this long also looks like this: raise "
                    "SHAREDBOX_STUCK_LOCK_TIMEOUT)",
                EDEADLK);
  }
}
#endif  // SBX_GLIBC_MUTEX

}  // namespace

void init_robust_mutex(pthread_mutex_t* m) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  // Error-checking: a thread that re-locks a stripe it holds gets EDEADLK
  // (reported as an error) instead of hanging forever.
  pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
  int rc = pthread_mutex_init(m, &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) throw Error(Errc::System, std::string("pthread_mutex_init: ") + std::strerror(rc), rc);
}

double stuck_lock_window_s() {
  const char* v = ::getenv("SHAREDBOX_STUCK_LOCK_TIMEOUT");
  if (v && *v) {
    char* end = nullptr;
    double s = strtod(v, &end);
    if (end && *end == '\0' && s > 0 && s < 1e9) return s;
  }
  return kDefaultWindowS;
}

int lock_robust(pthread_mutex_t* m, std::atomic<uint32_t>* holder, const char* what,
                int index) {
#if SBX_GLIBC_MUTEX
  check_kind(m, what, index);
  // Uncontended: one trylock, as cheap as pthread_mutex_lock's fast path.
  int rc = pthread_mutex_trylock(m);
  if (rc == EBUSY) rc = lock_spinning(m);
  if (rc == EBUSY) rc = lock_slow(m, holder, what, index);
  if (rc != 0 && rc != EOWNERDEAD) throw_unusable(what, index, rc);
  // Record the holder as the lock word names it (the id in our own PID
  // namespace, which is what waiters compare it with; right after a fork it is
  // the child's, which a cached gettid() would not be).
  holder->store(lock_word(m) & FUTEX_TID_MASK, std::memory_order_relaxed);
  return rc;
#else
  (void)holder;
  int rc = pthread_mutex_lock(m);
  if (rc != 0 && rc != EOWNERDEAD) throw_unusable(what, index, rc);
  return rc;
#endif
}

void unlock_robust(pthread_mutex_t* m, std::atomic<uint32_t>* holder) {
#if SBX_GLIBC_MUTEX
  holder->store(0, std::memory_order_relaxed);
#else
  (void)holder;
#endif
  // Its result is ignored: unlock fails only if the word was overwritten while
  // we held it (EPERM), and then there is nothing of ours left to release.
  pthread_mutex_unlock(m);
}

}  // namespace sbx
