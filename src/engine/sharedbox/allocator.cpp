// allocator.cpp — the heap: a bitmap of 64-byte units under one robust lock.
//
// Why a bitmap: its state is exactly "which units belong to a live block", so
// a crash inside an allocation can be replayed from a three-word journal, and
// the whole state can be re-derived from the index (check_integrity does).
// Freed neighbours coalesce for free, so churn cannot strand space between
// size classes.  The search is first fit, which keeps the live data packed at
// the low end of the segment (only touched pages cost memory), starting from
// the hint of the request's size class (AllocState::a_class_hint), so that
// the cost of a search does not grow with the holes other sizes leave.
#include <errno.h>
#include <fcntl.h>

#include <algorithm>

#include <cstddef>
#include <cstring>

#include "sharedbox/crash_points.hpp"
#include "sharedbox/dict.hpp"
#include "sharedbox/locks.hpp"
#include "sharedbox/robust_mutex.hpp"

namespace sbx {
namespace {

// Bit positions b such that free[b .. b+n-1] are all set (n <= 64), as a mask.
uint64_t runs_of(uint64_t free_bits, uint64_t n) {
  uint64_t r = free_bits;
  uint64_t have = 1;
  while (have < n && r) {
    uint64_t step = have < n - have ? have : n - have;
    r &= r >> step;
    have += step;
  }
  return r;
}

}  // namespace

// The size class of a request of n units: its index and the size it is
// rounded up to (at most 12.5% more above 16 units).  Requests above the
// largest class keep their size and search from the largest class's hint.
SizeClass size_class(uint64_t n) {
  if (n <= kExactClasses) return {uint32_t(n ? n - 1 : 0), n ? n : 1};
  if (n > kLargestClassUnits) return {kSizeClasses - 1, n};
  const uint32_t k = 63 - uint32_t(__builtin_clzll(n - 1));  // 2^k < n <= 2^(k+1), k >= 4
  const uint64_t step = uint64_t(1) << (k - 3);
  const uint64_t size = (n + step - 1) / step * step;
  return {kExactClasses + (k - 4) * 8 + uint32_t((size - (uint64_t(1) << k)) / step) - 1, size};
}

static_assert(kSizeClasses - 1 == kExactClasses + (11 - 4) * 8 + 7, "the last class is 4096 units");

void Dict::lock_alloc() {
  AllocState& a = hdr_->h_alloc;
  if (lock_robust(&a.a_mutex, &a.a_holder_tid, "the allocator lock", -1) == EOWNERDEAD) {
    recover_alloc();  // cannot fail: it only replays bounds-checked bit ranges
    pthread_mutex_consistent(&a.a_mutex);
    hdr_->h_recoveries.fetch_add(1, std::memory_order_relaxed);
  }
}

void Dict::unlock_alloc() { unlock_robust(&hdr_->h_alloc.a_mutex, &hdr_->h_alloc.a_holder_tid); }

// A bitmap word as the allocator must see it: units past the end of the heap
// always read as used, even if a stray write cleared their bits.
uint64_t Dict::bitmap_word(uint64_t w) const {
  uint64_t bits = bitmap_[w];
  if (w == bitmap_words_ - 1) {
    uint64_t tail = bitmap_words_ * 64 - heap_units_;
    if (tail) bits |= ~uint64_t(0) << (64 - tail);
  }
  return bits;
}

uint64_t Dict::find_run(uint64_t n, uint64_t hint) const {
  uint64_t run_start = 0, run_len = 0;
  if (hint >= bitmap_words_) hint = 0;  // never trust a hint that points nowhere
  for (uint64_t w = hint; w < bitmap_words_; ++w) {
    uint64_t bits = bitmap_word(w);
    if (bits == 0) {
      if (run_len == 0) run_start = w * 64;
      run_len += 64;
      if (run_len >= n) return run_start;
      continue;
    }
    if (bits == ~uint64_t(0)) {
      run_len = 0;
      continue;
    }
    // Low free bits extend the run that reached this word.
    uint64_t low_free = uint64_t(__builtin_ctzll(bits));
    if (run_len == 0) run_start = w * 64;
    if (run_len + low_free >= n) return run_start;
    if (n < 64) {
      uint64_t r = runs_of(~bits, n);
      if (r) return w * 64 + uint64_t(__builtin_ctzll(r));
    }
    // High free bits start a new run.
    uint64_t high_free = uint64_t(__builtin_clzll(bits));
    run_start = w * 64 + 64 - high_free;
    run_len = high_free;
  }
  return UINT64_MAX;
}

// First fit from the top of the heap, for index tables: they are small and
// long-lived, and keeping them apart from records stops them from splitting
// the free space that records leave behind.
uint64_t Dict::find_run_from_top(uint64_t n) const {
  uint64_t run_end = 0, run_len = 0;
  for (uint64_t w = bitmap_words_; w-- > 0;) {
    uint64_t bits = bitmap_word(w);
    if (bits == 0) {
      if (run_len == 0) run_end = (w + 1) * 64;
      run_len += 64;
      if (run_len >= n) return run_end - n;
      continue;
    }
    if (bits == ~uint64_t(0)) {
      run_len = 0;
      continue;
    }
    uint64_t high_free = uint64_t(__builtin_clzll(bits));
    if (run_len == 0) run_end = (w + 1) * 64;
    if (run_len + high_free >= n) return run_end - n;
    if (n < 64) {
      uint64_t r = runs_of(~bits, n);
      if (r) return w * 64 + 63 - uint64_t(__builtin_clzll(r));
    }
    uint64_t low_free = uint64_t(__builtin_ctzll(bits));
    run_end = w * 64 + low_free;
    run_len = low_free;
  }
  return UINT64_MAX;
}

void Dict::mark_units(uint64_t first, uint64_t n, bool used) {
  uint64_t end = first + n;
  while (first < end) {
    uint64_t w = first / 64, b = first % 64;
    uint64_t span = 64 - b < end - first ? 64 - b : end - first;
    uint64_t mask = (span == 64 ? ~uint64_t(0) : ((uint64_t(1) << span) - 1)) << b;
    if (used)
      bitmap_[w] |= mask;
    else
      bitmap_[w] &= ~mask;
    first += span;
  }
}

uint64_t Dict::count_used_units() const {
  uint64_t used = 0;
  for (uint64_t w = 0; w < bitmap_words_; ++w) used += uint64_t(__builtin_popcountll(bitmap_word(w)));
  return used - (bitmap_words_ * 64 - heap_units_);  // minus the permanent tail bits
}

uint64_t Dict::largest_free_run() const {
  uint64_t best = 0, run = 0;
  for (uint64_t u = 0; u < heap_units_; ++u) {
    if (u % 64 == 0 && bitmap_[u / 64] == 0 && u + 64 <= heap_units_) {
      run += 64;
      u += 63;
    } else if (bitmap_[u / 64] & (uint64_t(1) << (u % 64))) {
      run = 0;
    } else {
      ++run;
    }
    if (run > best) best = run;
  }
  return best;
}

// Allocates `units` (records from the bottom, index tables from the top) and stores the block's offset into *target inside the
// critical section (see AllocState).  Returns 0 when no run is large enough.
uint64_t Dict::alloc(uint64_t units, std::atomic<uint64_t>* target, bool from_top,
                     uint64_t tag) {
  AllocLock lock(this);
  AllocState& a = hdr_->h_alloc;
  const SizeClass cls = size_class(units);
  uint64_t first = from_top ? find_run_from_top(units) : find_run(units, a.a_class_hint[cls.index]);
  if (first == UINT64_MAX || first > heap_units_ || units > heap_units_ - first) return 0;
  reserve_units(first, units);  // may throw SegmentFull: nothing changed yet
  uint64_t off = heap_off_ + first * kUnit;
  a.a_off.store(off | tag, std::memory_order_relaxed);  // what the target receives
  a.a_units.store(units, std::memory_order_relaxed);
  a.a_target.store(off_of(target), std::memory_order_relaxed);
  a.a_op.store(kAllocAlloc, std::memory_order_release);
  SBX_CRASH_POINT(alloc_journal_open);
  mark_units(first, units, true);
  SBX_CRASH_POINT(alloc_bits_marked);
  target->store(off | tag, std::memory_order_release);
  SBX_CRASH_POINT(alloc_target_set);
  a.a_used_units.fetch_add(units, std::memory_order_relaxed);
  // First fit found no run of this class below `first`: the hint may move up
  // (only for an exact class size; a larger request skipped smaller runs).
  if (!from_top && units == cls.units && first / 64 > a.a_class_hint[cls.index])
    a.a_class_hint[cls.index] = uint32_t(first / 64);
  SBX_CRASH_POINT(alloc_counted);
  a.a_op.store(kAllocNone, std::memory_order_release);
  // Writers of the new block publish their first store (the record stamp or
  // the zeroed table) after this point; the release fence they issue pairs
  // with lock-free readers that may still be copying what the block held.
  return off;
}

// After units [first, first + n) were freed: measures the free run they now
// belong to (up to the largest class's size on either side) and lowers the
// hint of every class that run can hold to the run's first word.
void Dict::lower_class_hints(uint64_t first, uint64_t n) {
  // The run starts at most kLargestClassUnits below `first`, so no hint at
  // or below that run's lowest possible first word can move: frees next to
  // earlier frees (a delete loop) skip the scan of up to 128 bitmap words.
  AllocState& a = hdr_->h_alloc;
  const uint64_t lowest_word = first >= kLargestClassUnits + 64
                                   ? (first - kLargestClassUnits) / 64 - 1 : 0;
  bool any_above = false;
  for (uint32_t c = 0; c < kSizeClasses && !any_above; ++c)
    any_above = a.a_class_hint[c] > lowest_word;
  if (!any_above) return;
  uint64_t start = first, end = first + n;
  while (start > 0 && first - start < kLargestClassUnits) {  // free units below, a word at a time
    const uint64_t u = start - 1, b = u % 64;
    const uint64_t below = bitmap_word(u / 64) << (63 - b);  // bits 0..b, moved to the top
    if (below == 0) {
      start -= b + 1;
      continue;
    }
    start -= uint64_t(__builtin_clzll(below));
    break;
  }
  while (end < heap_units_ && end - first - n < kLargestClassUnits) {  // and above
    const uint64_t b = end % 64;
    const uint64_t above = bitmap_word(end / 64) >> b;
    if (above == 0) {
      end += 64 - b;
      continue;
    }
    end += uint64_t(__builtin_ctzll(above));
    break;
  }
  end = std::min(end, heap_units_);
  const uint64_t len = end - start;
  const uint32_t word = uint32_t(start / 64);
  for (uint32_t c = 0; c < kSizeClasses; ++c) {
    if (c >= kExactClasses && size_class_units(c) > len) break;
    if (c < kExactClasses && c + 1 > len) break;
    if (a.a_class_hint[c] > word) a.a_class_hint[c] = word;
  }
}

// Reserves the /dev/shm pages of heap units [first, first + units) before the
// allocator hands them out (alloc lock held).  Segments are sparse: a page
// costs memory only once touched, and touching one when the tmpfs is full
// kills the process with SIGBUS.  Reserving each range when the allocator
// first reaches it keeps the cost sparse and turns a full tmpfs into a clean
// SegmentFull here.  Ranges are rounded out to kReserveChunk so that the
// marks advance in steps of whole chunks, not one syscall per allocation.
void Dict::reserve_units(uint64_t first, uint64_t units) {
  constexpr uint64_t kReserveChunk = (1u << 20) / kUnit;  // 1 MiB
  AllocState& a = hdr_->h_alloc;
  const uint64_t end = first + units;
  const uint64_t low = a.a_reserved_low.load(std::memory_order_relaxed);
  const uint64_t high = a.a_reserved_high.load(std::memory_order_relaxed);
  if (end <= low || first >= high) return;
  const uint64_t from = first / kReserveChunk * kReserveChunk;
  const uint64_t to = std::min((end + kReserveChunk - 1) / kReserveChunk * kReserveChunk,
                               heap_units_);
  if (int e = ::posix_fallocate(fd_, off_t(heap_off_ + from * kUnit), off_t((to - from) * kUnit))) {
    if (e == ENOSPC || e == ENOMEM) throw Error(Errc::SegmentFull, shm_full_message(name_, e), e);
    throw Error(Errc::System, "cannot reserve memory for segment '" + name_ + "': " +
                                  std::strerror(e), e);
  }
  if (from <= low && to > low) a.a_reserved_low.store(to, std::memory_order_relaxed);
  if (to >= high && from < high) a.a_reserved_high.store(from, std::memory_order_relaxed);
  SBX_CRASH_POINT(alloc_pages_reserved);
}

// Frees the block whose offset is in *target and zeroes *target, in one
// critical section; a no-op if *target is already 0 (so replays are safe).
// Bits below kUnit in *target are a pin entry's state, not part of the offset.
void Dict::free_block(std::atomic<uint64_t>* target, uint64_t units) {
  AllocLock lock(this);
  AllocState& a = hdr_->h_alloc;
  uint64_t off = target->load(std::memory_order_acquire) & ~kPinStateMask;
  if (off == 0) return;
  if (off < heap_off_ || (off - heap_off_) % kUnit != 0 || units == 0 ||
      units > heap_units_ || (off - heap_off_) / kUnit > heap_units_ - units)
    throw Error(Errc::Corrupt, "refusing to free an out-of-bounds block at offset " +
                                   std::to_string(off));
  a.a_off.store(off, std::memory_order_relaxed);
  a.a_units.store(units, std::memory_order_relaxed);
  a.a_target.store(off_of(target), std::memory_order_relaxed);
  a.a_op.store(kAllocFree, std::memory_order_release);
  SBX_CRASH_POINT(free_journal_open);
  uint64_t first = (off - heap_off_) / kUnit;
  mark_units(first, units, false);
  SBX_CRASH_POINT(free_bits_cleared);
  target->store(0, std::memory_order_release);
  SBX_CRASH_POINT(free_target_cleared);
  a.a_used_units.fetch_sub(units, std::memory_order_relaxed);
  lower_class_hints(first, units);
  SBX_CRASH_POINT(free_counted);
  a.a_op.store(kAllocNone, std::memory_order_release);
}

// Whether `target` (read from a_target) is the offset of a stripe journal's
// j_new or j_old field, a stripe's s_spare or a pin entry's e_ref, the only
// fields alloc() and free_block() hand blocks through.  Anything else is
// corrupt and is not written: a target inside a stripe's mutex, for one,
// would overwrite a lock this thread may hold.
bool Dict::is_journal_target(uint64_t target) const {
  if (is_pin_target(target)) return true;
  const uint64_t first = off_of(stripes_);
  if (target < first || target >= first + uint64_t(nstripes_) * sizeof(Stripe)) return false;
  const uint64_t in = (target - first) % sizeof(Stripe);
  const uint64_t journal = offsetof(Stripe, s_journal);
  return in == journal + offsetof(Journal, j_new) || in == journal + offsetof(Journal, j_old) ||
         in == offsetof(Stripe, s_spare);
}

// Called with the allocator lock held after its previous owner died.  The
// journal names the one operation that may be half done; redo it (both are
// idempotent), then recompute the derived counters from the bitmap.
void Dict::recover_alloc() {
  AllocState& a = hdr_->h_alloc;
  SBX_CRASH_POINT(recover_alloc_begin);
  uint32_t op = a.a_op.load(std::memory_order_acquire);
  if (op == kAllocAlloc || op == kAllocFree) {
    const uint64_t word = a.a_off.load();  // what an ALLOC stores into the target
    uint64_t off = word & ~kPinStateMask, units = a.a_units.load(), target = a.a_target.load();
    bool sane = off >= heap_off_ && (off - heap_off_) % kUnit == 0 && units > 0 &&
                units <= heap_units_ && (off - heap_off_) / kUnit <= heap_units_ - units &&
                is_journal_target(target);
    if (sane) {
      mark_units((off - heap_off_) / kUnit, units, op == kAllocAlloc);
      reinterpret_cast<std::atomic<uint64_t>*>(base_ + target)
          ->store(op == kAllocAlloc ? word : 0, std::memory_order_release);
    }
  }
  SBX_CRASH_POINT(recover_alloc_replayed);
  a.a_used_units.store(count_used_units(), std::memory_order_relaxed);
  for (uint32_t& h : a.a_class_hint) h = 0;
  SBX_CRASH_POINT(recover_alloc_counted);
  a.a_op.store(kAllocNone, std::memory_order_release);
}

}  // namespace sbx
