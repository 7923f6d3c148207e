// racy.hpp — how engine code touches shared memory that another process may
// be changing at the same moment (engine-internal).
#pragma once

namespace sbx {

// A plain field of a record read by a lock-free reader, which may race with
// a writer reusing the block: an atomic (relaxed) load, so that the race is
// defined behaviour and the read takes part in the fence argument in
// Dict::get.  Compiles to an ordinary load.
template <class T>
inline T racy_load(const T& field) {
  return __atomic_load_n(&field, __ATOMIC_RELAXED);
}

// The writer's side of racy_load: a block being rebuilt may still be read by
// a lock-free reader of what it held before.
template <class T>
inline void racy_store(T& field, T value) {
  __atomic_store_n(&field, value, __ATOMIC_RELAXED);
}

// One pause of a spin-wait: lets the sibling hyper-thread run and saves power.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace sbx
