// dict.cpp — the index: per-stripe open-addressing tables, lock-free reads,
// journaled writes, and the repair of a stripe whose lock holder died.
#include "sharedbox/dict.hpp"

#include <errno.h>
#include <sched.h>

#include <algorithm>
#include <cstring>

#include "sharedbox/crash_points.hpp"
#include "sharedbox/hash.hpp"
#include "sharedbox/locks.hpp"
#include "sharedbox/robust_mutex.hpp"

namespace sbx {
namespace {

constexpr int kOptimisticReads = 8;  // lock-free tries before taking the stripe lock

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

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

inline uint64_t tag_of(uint64_t hash) { return (hash >> 16) & 0x3FFFFFu; }

// Heap units of a table of 2^log2cap slots.
inline uint64_t table_units(uint32_t log2cap) {
  return ((uint64_t(1) << log2cap) * sizeof(Slot) + kUnit - 1) / kUnit;
}

}  // namespace

// ---------------------------------------------------------------------------
// Locks.

Stripe& Dict::stripe(uint32_t i) const {
  return stripes_[i];
}

void Dict::lock_stripe(uint32_t i) {
  Stripe& s = stripe(i);
  const bool owner_died =
      lock_robust(&s.s_mutex, &s.s_holder_tid, "stripe lock", int(i)) == EOWNERDEAD;
  // A journal left open by a holder that did not die means its operation
  // failed part-way (it could not take the allocator lock, or met a corrupt
  // block after publishing): replay it exactly as for a dead owner.  Every
  // normal path closes its journal before unlocking.
  if (owner_died || s.s_journal.j_op.load(std::memory_order_acquire) != kOpNone) {
    try {
      recover_stripe(i);
    } catch (...) {
      // The journal stays open and the next holder replays it again (replays
      // are idempotent).  Marking the mutex consistent keeps a transient
      // failure (e.g. a stuck allocator lock) from making the stripe
      // permanently unusable; a journal that really is corrupt keeps failing
      // the replay, so every holder gets the error.
      if (owner_died) pthread_mutex_consistent(&s.s_mutex);
      unlock_robust(&s.s_mutex, &s.s_holder_tid);
      throw;
    }
  }
  if (owner_died) {
    pthread_mutex_consistent(&s.s_mutex);
    hdr_->h_recoveries.fetch_add(1, std::memory_order_relaxed);
  }
}

void Dict::unlock_stripe(uint32_t i) {
  Stripe& s = stripe(i);
  unlock_robust(&s.s_mutex, &s.s_holder_tid);
}

// ---------------------------------------------------------------------------
// Bounds-checked views of shared memory.  Everything a lock-free reader follows
// may be garbage (it may be reading freed memory), so every offset and length
// is checked against the heap before use.

Slot* Dict::table_slots(uint64_t ref) const {
  uint64_t off = table_offset(ref);
  uint32_t lg = table_log2(ref);
  if (lg < kMinTableLog2 || lg > 40 || off < heap_off_ || off % kUnit != 0) return nullptr;
  uint64_t bytes = (uint64_t(1) << lg) * sizeof(Slot);
  if (off > size_ || bytes > size_ - off) return nullptr;
  return reinterpret_cast<Slot*>(base_ + off);
}

const RecordHeader* Dict::record(uint64_t off, uint64_t* klen, uint64_t* vlen) const {
  if (off < heap_off_ || off > size_ || size_ - off < kHeaderBytes) return nullptr;
  auto* r = reinterpret_cast<const RecordHeader*>(base_ + off);
  uint64_t kl = racy_load(r->r_klen), vl = racy_load(r->r_vlen);
  uint64_t room = size_ - off - kHeaderBytes;
  if (kl > room || vl > room - kl) return nullptr;
  *klen = kl;
  *vlen = vl;
  return r;
}

bool Dict::holds_key(const RecordHeader* r, uint64_t klen, const KeyRef& k) const {
  return racy_load(r->r_hash) == k.hash && klen == k.len &&
         key_bytes_equal(reinterpret_cast<const uint8_t*>(r) + kHeaderBytes, k.data, k.len);
}

bool Dict::record_matches(uint64_t off, const KeyRef& k) const {
  uint64_t kl, vl;
  const RecordHeader* r = record(off, &kl, &vl);
  return r && holds_key(r, kl, k);
}

KeyRef Dict::key(const char* data, size_t len) const {
  if (len > UINT32_MAX) throw Error(Errc::InvalidArgument, "key is longer than 4 GiB");
  return KeyRef{data, uint32_t(len), hash_key(data, len, hash_seed_)};
}

// ---------------------------------------------------------------------------
// Reads.

bool Dict::get(const KeyRef& k, ValueSink& sink, uint64_t* stamp_out) {
  const uint32_t si = stripe_of(k.hash);
  Stripe& s = stripe(si);
  const uint64_t tag = tag_of(k.hash);
  for (int attempt = 0; attempt < kOptimisticReads; ++attempt) {
    uint64_t gen = s.s_table_gen.load(std::memory_order_acquire);
    if (gen & 1) {  // table being replaced
      cpu_relax();
      continue;
    }
    uint64_t ref = s.s_table_ref.load(std::memory_order_acquire);
    Slot* slots = ref ? table_slots(ref) : nullptr;
    uint64_t mask = slots ? (uint64_t(1) << table_log2(ref)) - 1 : 0;
    uint64_t pos = k.hash & mask;
    bool retry = ref && !slots;
    for (uint64_t n = 0; slots && n <= mask; ++n, pos = (pos + 1) & mask) {
      uint64_t c = slots[pos].load(std::memory_order_acquire);
      uint64_t state = slot_state(c);
      if (state == kSlotEmpty) break;
      if (state != kSlotFull || slot_tag(c) != tag) continue;
      // Read order matters: the stamp first (acquire), then every header
      // field, so that the final re-check of the stamp covers them all.  An
      // odd stamp is a record still being built (possibly at the offset of
      // the one this slot word named earlier): retry.
      uint64_t roff = slot_record(c);
      if (roff < heap_off_ || roff > size_ || size_ - roff < kHeaderBytes) {
        retry = true;
        break;
      }
      auto* r = reinterpret_cast<const RecordHeader*>(base_ + roff);
      uint64_t stamp = r->r_stamp.load(std::memory_order_acquire);
      // The re-check after a copy, and why it is enough under the C++
      // memory model (not only x86's):
      //  * Every writer that can change what this reader copies first makes
      //    the change visible as such, then issues a release fence, then
      //    writes the data: write_record stores an odd stamp, build_table
      //    writes the table words; a freed block is only reused after the
      //    writer took the allocator lock, which orders it after the store
      //    that unpublished the block (a new slot word, an erase, a new
      //    s_table_ref under an odd s_table_gen).
      //  * The reader loads the record's fields with atomic loads
      //    (racy_load, slot words, stamp), then issues an acquire fence, then
      //    re-loads slot, stamp and generation.  If any load before the fence
      //    read a value written after a writer's release fence, the two
      //    fences synchronise ([atomics.fences]/4), so everything the writer
      //    did before its fence (the odd stamp, the new slot word, the odd
      //    or bumped generation) happens-before the re-loads, which must see
      //    it (or later values) and so fail.  If no load read such a value,
      //    the copy is of the complete record that the acquire load of the
      //    slot (paired with the publishing release store) made visible.
      //  * The value bytes are copied with memcpy, not atomics: the one
      //    deliberate data race, as in every seqlock that copies bulk data
      //    (the reader's fence still orders those loads before the re-check
      //    on ARM and POWER, where it is a load-load barrier).  A copy that
      //    fails the re-check is thrown away before anything interprets it
      //    beyond bounds-checked parsing.
      auto still_valid = [&] {
        std::atomic_thread_fence(std::memory_order_acquire);
        return slots[pos].load(std::memory_order_relaxed) == c &&
               r->r_stamp.load(std::memory_order_relaxed) == stamp &&
               s.s_table_gen.load(std::memory_order_relaxed) == gen;
      };
      uint64_t kl, vl;
      if ((stamp & kStampBuilding) || !record(roff, &kl, &vl)) {
        retry = true;
        break;
      }
      if (!holds_key(r, kl, k)) {
        // Only a mismatch read from a stable record means "another key".
        if (still_valid()) continue;
        retry = true;
        break;
      }
      uint64_t voff = roff + kHeaderBytes + kl;
      try {
        sink.take(base_ + voff, vl, voff, false);
      } catch (...) {
        if (still_valid()) throw;  // a real error on stable data
        sink.reset();
        retry = true;
        break;
      }
      if (still_valid()) {
        if (stamp_out) *stamp_out = stamp;
        return true;
      }
      sink.reset();
      retry = true;
      break;
    }
    if (!retry) {
      std::atomic_thread_fence(std::memory_order_acquire);
      if (s.s_table_gen.load(std::memory_order_relaxed) == gen) return false;
    }
  }
  // Too many collisions with writers (or a dead writer left the table
  // generation odd): read under the lock, which also repairs.
  StripeLock lock(this, si);
  Probe p = find_locked(s, k);
  if (!p.found) return false;
  uint64_t kl, vl;
  uint64_t roff = slot_record(p.ctl);
  if (!record(roff, &kl, &vl)) throw Error(Errc::Corrupt, "record out of bounds");
  uint64_t voff = roff + kHeaderBytes + kl;
  sink.take(base_ + voff, vl, voff, true);
  if (stamp_out)
    *stamp_out = reinterpret_cast<const RecordHeader*>(base_ + roff)->r_stamp.load(
        std::memory_order_relaxed);
  return true;
}

namespace {
class DiscardSink : public ValueSink {
 public:
  void take(const uint8_t*, uint64_t, uint64_t, bool) override {}
  void reset() override {}
};
}  // namespace

bool Dict::contains(const KeyRef& k) {
  DiscardSink sink;
  return get(k, sink);
}

bool Dict::version(const KeyRef& k, uint64_t* v) {
  DiscardSink sink;
  uint64_t stamp = 0;
  if (!get(k, sink, &stamp)) return false;
  *v = stamp >> 1;  // without the "building" bit: unique for the segment's life
  return true;
}

uint64_t Dict::size() const {
  uint64_t n = 0;
  for (uint32_t i = 0; i < nstripes_; ++i) n += stripe(i).s_count.load(std::memory_order_relaxed);
  return n;
}

namespace {
// Takes the stripe's next record stamp.  Only the stripe-lock holder writes
// s_next_stamp, so a load and a store suffice (no locked instruction).
uint64_t next_stamp(Stripe& s) {
  uint64_t n = s.s_next_stamp.load(std::memory_order_relaxed);
  s.s_next_stamp.store(n + 1, std::memory_order_relaxed);
  return n;
}

// Brackets the part of a put or erase during which s_count may disagree with
// the slots (see Stripe::s_change_seq).  Nothing between them can throw.
void begin_change(Stripe& s) {
  uint64_t q = s.s_change_seq.load(std::memory_order_relaxed);
  s.s_change_seq.store((q + 1) | 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
}
void end_change(Stripe& s) {
  uint64_t q = s.s_change_seq.load(std::memory_order_relaxed);
  s.s_change_seq.store(q + 1, std::memory_order_release);
}
}  // namespace

// Sums the stripe counts, then checks that no stripe's change sequence moved
// (or was odd) meanwhile: every stripe was then quiet, with its count equal to
// its keys, at the instant between the two passes.  A few tries lock-free,
// then under every stripe lock, which stops all writers for one pass.
//
// The answer is kept with the h_keyset_epoch read before counting, if the
// epoch was the same after: no insert or delete began meanwhile, so the count
// held throughout.  While the epoch stays there, no insert or delete has
// published since (each moves it first), so the kept count is still the
// number of keys present: len() is then one shared load.
uint64_t Dict::exact_size() {
  const uint64_t epoch = hdr_->h_keyset_epoch.load(std::memory_order_seq_cst);
  if (len_epoch_.load(std::memory_order_acquire) == epoch) {
    uint64_t n = len_count_.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (len_epoch_.load(std::memory_order_relaxed) == epoch) return n;
  }
  const uint64_t n = count_keys();
  if (hdr_->h_keyset_epoch.load(std::memory_order_seq_cst) == epoch) {
    len_epoch_.store(kNoEpoch, std::memory_order_relaxed);  // other threads: not now
    std::atomic_thread_fence(std::memory_order_release);
    len_count_.store(n, std::memory_order_relaxed);
    len_epoch_.store(epoch, std::memory_order_release);
  }
  return n;
}

uint64_t Dict::count_keys() {
  std::vector<uint64_t> seen(nstripes_);
  for (int attempt = 0; attempt < 16; ++attempt) {
    uint64_t n = 0;
    bool quiet = true;
    for (uint32_t i = 0; i < nstripes_ && quiet; ++i) {
      const Stripe& s = stripe(i);
      seen[i] = s.s_change_seq.load(std::memory_order_acquire);
      quiet = (seen[i] & 1) == 0;
      n += s.s_count.load(std::memory_order_relaxed);
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    for (uint32_t i = 0; i < nstripes_ && quiet; ++i)
      quiet = stripe(i).s_change_seq.load(std::memory_order_relaxed) == seen[i];
    if (quiet) return n;
  }
  AllStripesLock all(this);
  SBX_CRASH_POINT(len_all_locked);
  return size();
}

// ---------------------------------------------------------------------------
// Writes (stripe lock held).

Dict::Probe Dict::find_locked(const Stripe& s, const KeyRef& k) const {
  Probe p;
  uint64_t ref = s.s_table_ref.load(std::memory_order_relaxed);
  if (!ref) return p;
  Slot* slots = table_slots(ref);
  if (!slots) throw Error(Errc::Corrupt, "stripe table reference out of bounds");
  uint64_t mask = (uint64_t(1) << table_log2(ref)) - 1;
  uint64_t tag = tag_of(k.hash);
  uint64_t pos = k.hash & mask;
  for (uint64_t n = 0; n <= mask; ++n, pos = (pos + 1) & mask) {
    uint64_t c = slots[pos].load(std::memory_order_relaxed);
    uint64_t state = slot_state(c);
    if (state == kSlotEmpty) {
      if (!p.has_free) {
        p.has_free = true;
        p.free_idx = pos;
        p.free_is_tomb = false;
      }
      break;
    }
    if (state == kSlotTomb) {
      if (!p.has_free) {
        p.has_free = true;
        p.free_idx = pos;
        p.free_is_tomb = true;
      }
      continue;
    }
    if (slot_tag(c) == tag && record_matches(slot_record(c), k)) {
      p.found = true;
      p.idx = pos;
      p.ctl = c;
      return p;
    }
  }
  return p;
}

bool Dict::reserve_key() {
  uint64_t cur = hdr_->h_reserved_keys.load(std::memory_order_relaxed);
  const uint64_t limit = max_keys_;
  while (cur < limit) {
    if (hdr_->h_reserved_keys.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel))
      return true;
  }
  return false;
}

// Recomputes h_reserved_keys from the stripe counts, all stripes locked.
void Dict::recount() {
  AllStripesLock all(this);
  SBX_CRASH_POINT(recount_all_locked);
  uint64_t n = 0;
  for (uint32_t i = 0; i < nstripes_; ++i) n += stripe(i).s_count.load(std::memory_order_relaxed);
  hdr_->h_reserved_keys.store(n, std::memory_order_release);
  SBX_CRASH_POINT(recount_stored);
  hdr_->h_recount_needed.store(0, std::memory_order_release);
}

// Zeroes a freshly allocated block and rehashes the full slots of old_ref
// into it (stripe lock held).  Like write_record, it may overwrite memory a
// lock-free reader is still copying; readers re-check s_table_gen.
__attribute__((noinline)) void Dict::build_table(uint64_t off, uint64_t units, uint64_t old_ref,
                                                 uint32_t lg) {
  std::atomic_thread_fence(std::memory_order_release);
  std::memset(base_ + off, 0, units * kUnit);
  uint64_t cap = uint64_t(1) << lg;
  Slot* fresh = reinterpret_cast<Slot*>(base_ + off);
  if (!old_ref) return;
  Slot* old = table_slots(old_ref);
  if (!old) throw Error(Errc::Corrupt, "stripe table reference out of bounds");
  uint64_t old_cap = uint64_t(1) << table_log2(old_ref);
  uint64_t placed = 0;
  for (uint64_t i = 0; i < old_cap; ++i) {
    uint64_t c = old[i].load(std::memory_order_relaxed);
    if (slot_state(c) != kSlotFull) continue;
    // The new table is sized from s_count; more full slots than that means
    // corrupted counters, and probing a full table would never end.
    if (++placed >= cap) throw Error(Errc::Corrupt, "stripe holds more keys than its count");
    uint64_t kl, vl;
    const RecordHeader* r = record(slot_record(c), &kl, &vl);
    if (!r) throw Error(Errc::Corrupt, "record out of bounds during resize");
    uint64_t pos = r->r_hash & (cap - 1);
    while (fresh[pos].load(std::memory_order_relaxed) != kSlotEmpty) pos = (pos + 1) & (cap - 1);
    fresh[pos].store(c, std::memory_order_relaxed);
  }
}

// Replaces stripe si's table by a fresh one sized for want_keys live keys,
// dropping tombstones.  Journaled as kOpResize; published by one store of
// s_table_ref inside an odd s_table_gen.
void Dict::resize_locked(uint32_t si, uint64_t want_keys) {
  Stripe& s = stripe(si);
  Journal& j = s.s_journal;
  // want_keys comes from the shared s_count: a corrupted count could
  // overflow the doubling below and never end the loop.  One stripe holds at
  // most max_keys keys (+1 for the insert that is about to be refused).
  if (want_keys > max_keys_ + 1)
    throw Error(Errc::Corrupt, "stripe " + std::to_string(si) + " counts " +
                                   std::to_string(want_keys - 1) + " keys, more than max_keys");
  uint32_t lg = kMinTableLog2;
  while ((uint64_t(1) << lg) < want_keys * 2) ++lg;
  uint64_t units = table_units(lg);
  if (units > heap_units_)
    throw Error(Errc::SegmentFull, "the segment is too small for an index of this many keys");

  uint64_t old_ref = s.s_table_ref.load(std::memory_order_relaxed);
  j.j_table.store(old_ref, std::memory_order_relaxed);
  j.j_old.store(old_ref ? table_offset(old_ref) : 0, std::memory_order_relaxed);
  j.j_old_units.store(old_ref ? table_units(table_log2(old_ref)) : 0, std::memory_order_relaxed);
  j.j_new.store(0, std::memory_order_relaxed);
  j.j_new_units.store(units, std::memory_order_relaxed);
  j.j_count.store(s.s_count.load(std::memory_order_relaxed), std::memory_order_relaxed);
  j.j_tombs.store(s.s_tombs.load(std::memory_order_relaxed), std::memory_order_relaxed);
  j.j_op.store(kOpResize, std::memory_order_release);
  SBX_CRASH_POINT(resize_journal_open);

  uint64_t off;
  try {
    off = alloc(units, &j.j_new, /*from_top=*/true);
  } catch (...) {  // the allocator lock failed before anything was allocated
    j.j_op.store(kOpNone, std::memory_order_release);
    throw;
  }
  if (!off) {
    j.j_op.store(kOpNone, std::memory_order_release);
    throw Error(Errc::SegmentFull, "");
  }
  SBX_CRASH_POINT(resize_table_allocated);
  try {
    build_table(off, units, old_ref, lg);
  } catch (...) {
    free_block(&j.j_new, units);
    j.j_op.store(kOpNone, std::memory_order_release);
    throw;
  }
  SBX_CRASH_POINT(resize_table_built);
  uint64_t gen = s.s_table_gen.load(std::memory_order_relaxed);
  s.s_table_gen.store(gen + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  SBX_CRASH_POINT(resize_gen_odd);
  s.s_table_ref.store(make_table_ref(off, lg), std::memory_order_release);
  SBX_CRASH_POINT(resize_published);
  s.s_table_gen.store(gen + 2, std::memory_order_release);
  s.s_tombs.store(0, std::memory_order_relaxed);
  SBX_CRASH_POINT(resize_gen_even);
  free_block(&j.j_old, j.j_old_units.load(std::memory_order_relaxed));
  SBX_CRASH_POINT(resize_old_freed);
  j.j_op.store(kOpNone, std::memory_order_release);
}

// Fills a freshly allocated block with a record (stripe lock held).  Lock-free
// readers may still be copying what the block held before it was freed; the
// odd stamp and the release fence make them discard those copies, and the
// final even stamp (release) tells them the record is complete.  Kept out of
// line so that ThreadSanitizer can name exactly these intended races
// (tests/engine/tsan.supp).
__attribute__((noinline)) void Dict::write_record(uint64_t off, uint64_t units, uint64_t stamp,
                                                  const KeyRef& k, ValueSource& src,
                                                  uint64_t vmax) {
  auto* r = reinterpret_cast<RecordHeader*>(base_ + off);
  r->r_stamp.store(stamp | kStampBuilding, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  racy_store(r->r_hash, k.hash);
  racy_store(r->r_units, units);
  racy_store(r->r_klen, k.len);
  r->r_flags.store(0, std::memory_order_relaxed);
  std::memcpy(base_ + off + kHeaderBytes, k.data, k.len);
  uint64_t voff = off + kHeaderBytes + k.len;
  uint64_t vlen = src.write(base_ + voff, voff);
  if (vlen > vmax) throw Error(Errc::Corrupt, "value writer overran its declared size");
  racy_store(r->r_vlen, vlen);
  r->r_stamp.store(stamp, std::memory_order_release);
}

namespace {
// put() as an update: store `src` unless IfAbsent finds the key present.
class PutDecision : public UpdateFn {
 public:
  PutDecision(ValueSource& src, PutMode mode) : src_(src), mode_(mode) {}
  ValueSource* decide(const uint8_t*, uint64_t, bool present) override {
    return present && mode_ == PutMode::IfAbsent ? nullptr : &src_;
  }

 private:
  ValueSource& src_;
  PutMode mode_;
};
}  // namespace

bool Dict::put(const KeyRef& k, ValueSource& src, PutMode mode) {
  check_fits(k, src.max_bytes());  // before any lock: fails fast for a value that never fits
  PutDecision decision(src, mode);
  return update(k, decision);
}

void Dict::throw_never_fits(uint64_t vmax) const {
  const uint64_t heap_bytes = heap_units_ * kUnit;
  throw Error(Errc::ValueTooLarge,
              "the value (" + std::to_string(vmax) + " bytes with its key) can never fit in "
              "this segment, whose heap is " + std::to_string(heap_bytes) +
              " bytes; create the SharedDict with a larger size= (see recommend_sizing())");
}

// Every write is a read-modify-write: the decision is taken under the stripe
// lock from the value present then, and published by the same journaled
// steps, so incr and compare_and_set are exactly as crash-safe as put.
//
// `built` (publish_built): the new record is already written, in a block
// that pin entry built->entry owns; it is handed to the journal instead of
// allocating and writing one.
bool Dict::update_impl(const KeyRef& k, UpdateFn& fn, const Pin* built) {
  const uint32_t si = stripe_of(k.hash);
  Stripe& s = stripe(si);
  Journal& j = s.s_journal;

  bool reclaimed = false;  // spares handed back once before reporting a full segment
  for (;;) {
    StripeLock lock(this, si);
    Probe p = find_locked(s, k);
    ValueSource* chosen;
    const RecordHeader* old_record = nullptr;  // the key's record, if present
    {
      const uint8_t* old = nullptr;
      uint64_t old_len = 0;
      if (p.found) {
        uint64_t kl;
        uint64_t roff = slot_record(p.ctl);
        old_record = record(roff, &kl, &old_len);
        if (!old_record) throw Error(Errc::Corrupt, "record out of bounds");
        old = base_ + roff + kHeaderBytes + kl;
      }
      chosen = fn.decide(old, old_len, p.found);  // may throw: nothing changed yet
    }
    if (!chosen) return false;
    ValueSource& src = *chosen;
    const uint64_t vmax = src.max_bytes();
    if (!built) check_fits(k, vmax);
    // Rounded up to the allocator's size class, so that blocks freed by one
    // size are reused by the same size (see AllocState::a_class_hint).
    const uint64_t units =
        built ? reinterpret_cast<const RecordHeader*>(base_ + built->block)->r_units
              : size_class((kHeaderBytes + k.len + vmax + kUnit - 1) / kUnit).units;
    bool reserved = false;
    if (!p.found) {
      uint64_t count = s.s_count.load(std::memory_order_relaxed);
      uint64_t tombs = s.s_tombs.load(std::memory_order_relaxed);
      uint64_t ref = s.s_table_ref.load(std::memory_order_relaxed);
      uint64_t cap = ref ? uint64_t(1) << table_log2(ref) : 0;
      // Keep live + tombstones under 3/4 of the table so probes stay short
      // and an empty slot always ends every probe sequence.
      if (!ref || (count + tombs + 1) * 4 > cap * 3) {
        try {
          resize_locked(si, count + 1);
        } catch (const Error& e) {
          if (e.code() != Errc::SegmentFull) throw;
          if (!reclaimed) {
            lock.unlock();
            reclaimed = true;
            if (reclaim_spares() | (reclaim_dead_pins() > 0)) continue;
          }
          throw Error(Errc::SegmentFull,
                      "the segment is full: no room to grow the index for a new key (" +
                          std::to_string(size()) + " keys stored); delete keys or create a "
                          "larger SharedDict (see recommend_sizing())");
        }
        p = find_locked(s, k);
      }
      if (!reserve_key()) {
        if (hdr_->h_recount_needed.load(std::memory_order_acquire)) {
          lock.unlock();
          recount();
          continue;
        }
        throw Error(Errc::TooManyKeys,
                    "the SharedDict '" + name_ + "' already holds max_keys=" +
                        std::to_string(max_keys_) +
                        " keys; delete keys or create it with a larger max_keys "
                        "(see recommend_sizing())");
      }
      reserved = true;
      SBX_CRASH_POINT(put_key_reserved);
    }
    uint64_t slot_idx = p.found ? p.idx : p.free_idx;
    uint64_t ref = s.s_table_ref.load(std::memory_order_relaxed);
    Slot* slots = table_slots(ref);
    if (!slots || (!p.found && !p.has_free)) throw Error(Errc::Corrupt, "stripe table unusable");
    uint64_t old_off = p.found ? slot_record(p.ctl) : 0;
    uint64_t old_units = old_record ? old_record->r_units : 0;
    uint64_t count = s.s_count.load(std::memory_order_relaxed);
    uint64_t tombs = s.s_tombs.load(std::memory_order_relaxed);
    j.j_insert.store(p.found ? 0 : 1, std::memory_order_relaxed);
    j.j_was_tomb.store(!p.found && p.free_is_tomb ? 1 : 0, std::memory_order_relaxed);
    j.j_reserved.store(reserved ? 1 : 0, std::memory_order_relaxed);
    j.j_slot.store(slot_idx, std::memory_order_relaxed);
    j.j_table.store(ref, std::memory_order_relaxed);
    j.j_new.store(0, std::memory_order_relaxed);
    j.j_new_units.store(units, std::memory_order_relaxed);
    j.j_old.store(old_off, std::memory_order_relaxed);
    j.j_old_units.store(old_units, std::memory_order_relaxed);
    j.j_count.store(count, std::memory_order_relaxed);
    j.j_tombs.store(tombs, std::memory_order_relaxed);
    j.j_op.store(kOpPut, std::memory_order_release);
    SBX_CRASH_POINT(put_journal_open);

    // Returns the key reservation of a put that will not publish.  The
    // journal forgets it first: a crash in between leaves the count one too
    // high (recovery requests a recount), whereas the other order would let
    // recovery release it a second time and push the count below the keys
    // present, after which max_keys could be exceeded.
    auto release_reservation = [&] {
      if (!reserved) return;
      j.j_reserved.store(0, std::memory_order_relaxed);
      hdr_->h_reserved_keys.fetch_sub(1, std::memory_order_acq_rel);  // after the store above
      SBX_CRASH_POINT(put_rollback_unreserved);
    };
    auto roll_back = [&] {
      free_block(&j.j_new, j.j_new_units.load(std::memory_order_relaxed));
      SBX_CRASH_POINT(put_rollback_freed);
      release_reservation();
      j.j_op.store(kOpNone, std::memory_order_release);
    };

    if (built) {
      // Hand the built block to the journal, then make the builder's entry a
      // plain pin of what is about to be a live record (see pins.cpp).
      j.j_new.store(built->block, std::memory_order_release);
      SBX_CRASH_POINT(publish_journal_named);
      pin_entry(uint32_t(pins_slot()), built->entry)
          .e_ref.store(built->block, std::memory_order_release);
      SBX_CRASH_POINT(publish_pin_converted);
      uint64_t stamp = (next_stamp(s) << 17) | (uint64_t(si) << 1);
      reinterpret_cast<RecordHeader*>(base_ + built->block)
          ->r_stamp.store(stamp, std::memory_order_release);
      SBX_CRASH_POINT(publish_stamped);
    }
    uint64_t off = built ? built->block : take_spare(s, units);
    uint64_t block_units = off && !built ? j.j_new_units.load(std::memory_order_relaxed) : units;
    if (!off) {
      try {
        off = alloc(units, &j.j_new);
      } catch (...) {  // nothing was allocated (a failed lock, or /dev/shm is full)
        release_reservation();
        j.j_op.store(kOpNone, std::memory_order_release);
        throw;
      }
    }
    if (!off) {
      roll_back();
      if (!reclaimed) {
        lock.unlock();
        reclaimed = true;
        if (reclaim_spares() | (reclaim_dead_pins() > 0)) continue;
      }
      throw Error(Errc::SegmentFull,
                  "the segment '" + name_ + "' is full: no free block of " +
                      std::to_string(units * kUnit) + " bytes for this value; delete keys or "
                      "create a larger SharedDict (see recommend_sizing())");
    }
    if (!built) {
      uint64_t stamp = (next_stamp(s) << 17) | (uint64_t(si) << 1);
      try {
        write_record(off, block_units, stamp, k, src, vmax);
      } catch (...) {
        roll_back();
        throw;
      }
      SBX_CRASH_POINT(put_record_written);
    }
    // Publish: one store makes the complete record visible.
    if (!p.found) {
      hdr_->h_keyset_epoch.fetch_add(1, std::memory_order_seq_cst);  // before publishing
      begin_change(s);
      SBX_CRASH_POINT(put_change_begun);
    }
    slots[slot_idx].store(make_full_slot(off, tag_of(k.hash)), std::memory_order_release);
    SBX_CRASH_POINT(put_published);
    if (!p.found) {
      s.s_count.store(count + 1, std::memory_order_relaxed);
      if (p.free_is_tomb) s.s_tombs.store(tombs - 1, std::memory_order_relaxed);
      SBX_CRASH_POINT(put_counted);
      end_change(s);
      SBX_CRASH_POINT(put_change_ended);
    }
    if (old_off) {
      retire_block(s, &j.j_old, old_units);
      SBX_CRASH_POINT(put_old_retired);
    }
    j.j_op.store(kOpNone, std::memory_order_release);
    SBX_CRASH_POINT(put_done);
    notify_change(s);
    return true;
  }
}

// Takes the stripe's spare block for a record of `units` if it fits without
// wasting more than half of it, handing it to the journal's j_new first (see
// Stripe::s_spare).  Returns its offset (j_new_units then holds its size), or
// 0 to use the allocator.
uint64_t Dict::take_spare(Stripe& s, uint64_t units) {
  uint64_t spare = s.s_spare.load(std::memory_order_relaxed);
  uint64_t spare_units = s.s_spare_units.load(std::memory_order_relaxed);
  if (!spare || spare_units < units || spare_units > units + units / 2) return 0;
  if (spare < heap_off_ || (spare - heap_off_) % kUnit != 0 || spare_units > kSpareMaxUnits ||
      (spare - heap_off_) / kUnit + spare_units > heap_units_)
    throw Error(Errc::Corrupt, "stripe spare block out of bounds");
  Journal& j = s.s_journal;
  j.j_new_units.store(spare_units, std::memory_order_relaxed);
  j.j_new.store(spare, std::memory_order_release);
  SBX_CRASH_POINT(spare_named_by_journal);
  s.s_spare.store(0, std::memory_order_release);
  SBX_CRASH_POINT(spare_taken);
  return spare;
}

// Gives up the block in *target (a journal field): a small block becomes the
// stripe's spare, and the spare it replaces (if any) goes back to the
// allocator, as do large blocks.  The newest block is kept because the next
// write to the stripe is likeliest to need its size: keeping the older one
// let a spare of one value kind (left by a pass over dicts) refuse every
// write of another kind (ints), each of which then took the allocator twice.
void Dict::retire_block(Stripe& s, std::atomic<uint64_t>* target, uint64_t units) {
  if (hand_to_pins(target)) return;  // views still read it: the last one frees it
  uint64_t off = target->load(std::memory_order_relaxed);
  if (off && units <= kSpareMaxUnits) {
    if (s.s_spare.load(std::memory_order_relaxed) != 0) {
      free_block(&s.s_spare, s.s_spare_units.load(std::memory_order_relaxed));  // zeroes s_spare
      SBX_CRASH_POINT(retire_old_spare_freed);
    }
    s.s_spare_units.store(units, std::memory_order_relaxed);
    s.s_spare.store(off, std::memory_order_release);
    SBX_CRASH_POINT(retire_named_by_spare);
    target->store(0, std::memory_order_release);
    SBX_CRASH_POINT(retire_spare_kept);
    return;
  }
  free_block(target, units);
}

// Hands every stripe's spare back to the allocator, taking one stripe lock at
// a time (the caller holds none).  Called once before a write reports a full
// segment, so that space freed by deletes elsewhere is found.  Returns whether
// anything was handed back.
bool Dict::reclaim_spares() {
  bool any = false;
  for (uint32_t i = 0; i < nstripes_; ++i) {
    Stripe& s = stripe(i);
    if (s.s_spare.load(std::memory_order_relaxed) == 0) continue;  // racy peek; rechecked
    StripeLock lock(this, i);
    if (s.s_spare.load(std::memory_order_relaxed) == 0) continue;
    SBX_CRASH_POINT(reclaim_stripe_locked);
    free_block(&s.s_spare, s.s_spare_units.load(std::memory_order_relaxed));
    SBX_CRASH_POINT(reclaim_spare_freed);
    any = true;
  }
  return any;
}

bool Dict::erase(const KeyRef& k, ValueSink* old_value) {
  const uint32_t si = stripe_of(k.hash);
  Stripe& s = stripe(si);
  Journal& j = s.s_journal;
  StripeLock lock(this, si);
  Probe p = find_locked(s, k);
  if (!p.found) return false;
  uint64_t roff = slot_record(p.ctl);
  uint64_t kl, vl;
  const RecordHeader* r = record(roff, &kl, &vl);
  if (!r) throw Error(Errc::Corrupt, "record out of bounds");
  if (old_value) {
    uint64_t voff = roff + kHeaderBytes + kl;
    old_value->take(base_ + voff, vl, voff, true);  // may throw: nothing changed yet
  }
  uint64_t ref = s.s_table_ref.load(std::memory_order_relaxed);
  uint64_t count = s.s_count.load(std::memory_order_relaxed);
  uint64_t tombs = s.s_tombs.load(std::memory_order_relaxed);
  j.j_slot.store(p.idx, std::memory_order_relaxed);
  j.j_table.store(ref, std::memory_order_relaxed);
  j.j_new.store(0, std::memory_order_relaxed);
  j.j_old.store(roff, std::memory_order_relaxed);
  j.j_old_units.store(r->r_units, std::memory_order_relaxed);
  j.j_count.store(count, std::memory_order_relaxed);
  j.j_tombs.store(tombs, std::memory_order_relaxed);
  j.j_op.store(kOpErase, std::memory_order_release);
  SBX_CRASH_POINT(erase_journal_open);

  hdr_->h_keyset_epoch.fetch_add(1, std::memory_order_seq_cst);  // before publishing
  begin_change(s);
  SBX_CRASH_POINT(erase_change_begun);
  table_slots(ref)[p.idx].store(kSlotTomb, std::memory_order_release);
  SBX_CRASH_POINT(erase_published);
  s.s_count.store(count - 1, std::memory_order_relaxed);
  s.s_tombs.store(tombs + 1, std::memory_order_relaxed);
  SBX_CRASH_POINT(erase_counted);
  end_change(s);
  SBX_CRASH_POINT(erase_change_ended);
  retire_block(s, &j.j_old, j.j_old_units.load(std::memory_order_relaxed));
  SBX_CRASH_POINT(erase_old_retired);
  // Released after the key is gone and while the journal is open: a crash
  // before this leaves the count too high (recovery requests a recount);
  // recovery of a published erase never releases it again.
  hdr_->h_reserved_keys.fetch_sub(1, std::memory_order_acq_rel);
  SBX_CRASH_POINT(erase_unreserved);
  j.j_op.store(kOpNone, std::memory_order_release);
  SBX_CRASH_POINT(erase_done);
  notify_change(s);
  return true;
}

// ---------------------------------------------------------------------------
// Crash repair.  Called with stripe i's lock held after its owner died.  The
// journal says which operation was in flight; the slot (or table reference)
// says whether its publishing store happened.  Roll forward or back, then
// restore the counters from the journal.  h_reserved_keys cannot be repaired
// locally (another stripe may be changing it), so a recount is requested.
// Every step is idempotent, so a crash inside recovery is repaired by the
// next holder running it again.
void Dict::recover_stripe(uint32_t i) {
  Stripe& s = stripe(i);
  Journal& j = s.s_journal;
  hdr_->h_recount_needed.store(1, std::memory_order_release);
  SBX_CRASH_POINT(recover_stripe_begin);
  // Settle the allocator before reading anything here.  The dead holder may
  // have died inside alloc() or free_block() with a field of this stripe as
  // the target (j_new, j_old or s_spare), even with the stripe journal closed
  // (reclaim_spares frees s_spare outside any stripe operation).  The
  // allocator's replay rewrites that field; acting on it before the replay
  // would, for one, hand out a spare block that the replay then frees.
  // Taking the allocator lock runs any pending replay (Dict::lock_alloc).
  { AllocLock settle(this); }
  SBX_CRASH_POINT(recover_stripe_alloc_settled);
  uint32_t op = j.j_op.load(std::memory_order_acquire);
  uint64_t gen = s.s_table_gen.load(std::memory_order_relaxed);
  if (gen & 1) s.s_table_gen.store(gen + 1, std::memory_order_release);
  SBX_CRASH_POINT(recover_stripe_seq_even);
  struct EvenChangeSeq {  // after the counts below are repaired, whatever happens
    Stripe& s;
    ~EvenChangeSeq() {
      uint64_t q = s.s_change_seq.load(std::memory_order_relaxed);
      if (q & 1) s.s_change_seq.store(q + 1, std::memory_order_release);
    }
  } even_change_seq{s};
  if (op == kOpNone) return;
  // A block named by both the spare and the journal was being handed over
  // (take_spare / retire_block): the journal's claim wins, and the replay
  // below keeps or frees it.
  uint64_t spare = s.s_spare.load(std::memory_order_relaxed);
  if (spare && (spare == j.j_new.load(std::memory_order_relaxed) ||
                spare == j.j_old.load(std::memory_order_relaxed))) {
    s.s_spare.store(0, std::memory_order_release);
    SBX_CRASH_POINT(recover_stripe_spare_cleared);
  }

  uint64_t ref = s.s_table_ref.load(std::memory_order_relaxed);
  if (op == kOpResize) {
    uint64_t fresh = j.j_new.load(std::memory_order_acquire);
    if (fresh && table_offset(ref) == fresh) {  // published: drop the old table
      s.s_tombs.store(0, std::memory_order_relaxed);
      free_block(&j.j_old, j.j_old_units.load(std::memory_order_relaxed));
    } else {  // not published: drop the new one
      free_block(&j.j_new, j.j_new_units.load(std::memory_order_relaxed));
    }
    SBX_CRASH_POINT(recover_stripe_replayed);
    j.j_op.store(kOpNone, std::memory_order_release);
    SBX_CRASH_POINT(recover_stripe_done);
    return;
  }

  Slot* slots = ref ? table_slots(ref) : nullptr;
  uint64_t idx = j.j_slot.load(std::memory_order_relaxed);
  if (!slots || ref != j.j_table.load(std::memory_order_relaxed) ||
      idx >= (uint64_t(1) << table_log2(ref)))
    throw Error(Errc::Corrupt, "stripe journal does not match its table");
  uint64_t c = slots[idx].load(std::memory_order_acquire);
  uint64_t count = j.j_count.load(std::memory_order_relaxed);
  uint64_t tombs = j.j_tombs.load(std::memory_order_relaxed);

  if (op == kOpPut) {
    uint64_t fresh = j.j_new.load(std::memory_order_acquire);
    bool insert = j.j_insert.load(std::memory_order_relaxed) != 0;
    bool published = fresh && slot_state(c) == kSlotFull && slot_record(c) == fresh;
    if (published) {
      s.s_count.store(count + (insert ? 1 : 0), std::memory_order_relaxed);
      s.s_tombs.store(tombs - (insert && j.j_was_tomb.load() ? 1 : 0), std::memory_order_relaxed);
      free_or_hand_to_pins(&j.j_old, j.j_old_units.load(std::memory_order_relaxed));
      SBX_CRASH_POINT(recover_stripe_replayed);
    } else {
      drop_pins_of(fresh);  // a publish_built that did not happen: the journal frees its block
      free_block(&j.j_new, j.j_new_units.load(std::memory_order_relaxed));
      s.s_count.store(count, std::memory_order_relaxed);
      s.s_tombs.store(tombs, std::memory_order_relaxed);
      SBX_CRASH_POINT(recover_stripe_replayed);
      // As in put's roll-back: forget the reservation, then release it, so
      // that a crash in between cannot make a rerun release it twice.
      if (insert && j.j_reserved.load(std::memory_order_relaxed)) {
        j.j_reserved.store(0, std::memory_order_relaxed);
        hdr_->h_reserved_keys.fetch_sub(1, std::memory_order_acq_rel);
        SBX_CRASH_POINT(recover_stripe_unreserved);
      }
    }
  } else if (op == kOpErase) {
    if (slot_state(c) == kSlotTomb) {  // published
      s.s_count.store(count - 1, std::memory_order_relaxed);
      s.s_tombs.store(tombs + 1, std::memory_order_relaxed);
      free_or_hand_to_pins(&j.j_old, j.j_old_units.load(std::memory_order_relaxed));
    } else {
      s.s_count.store(count, std::memory_order_relaxed);
      s.s_tombs.store(tombs, std::memory_order_relaxed);
    }
    SBX_CRASH_POINT(recover_stripe_replayed);
  }
  j.j_op.store(kOpNone, std::memory_order_release);
  SBX_CRASH_POINT(recover_stripe_done);
  notify_change(s);  // a dead writer may have published without waking anyone
}

// ---------------------------------------------------------------------------
// Whole-dict operations.

// Calls fn(record, key_len, value_len) for every live record of stripe i,
// whose lock the caller holds.
template <class Fn>
void Dict::for_each_record(uint32_t i, Fn&& fn) const {
  uint64_t ref = stripe(i).s_table_ref.load(std::memory_order_relaxed);
  if (!ref) return;
  Slot* slots = table_slots(ref);
  if (!slots) throw Error(Errc::Corrupt, "stripe table reference out of bounds");
  uint64_t cap = uint64_t(1) << table_log2(ref);
  // Records are scattered over the heap, so each one is a cache miss; asking
  // for the record a few slots ahead overlaps those misses (a whole-table walk
  // ran about 2x faster with it).  A prefetch never faults, so an offset that
  // is out of bounds here is harmless; record() still checks it before use.
  constexpr uint64_t kAhead = 8;
  const uintptr_t base = reinterpret_cast<uintptr_t>(base_);
  uint64_t walked_units = 0;
  for (uint64_t n = 0; n < cap; ++n) {
    if (n + kAhead < cap) {
      uint64_t ahead = slots[n + kAhead].load(std::memory_order_relaxed);
      if (slot_state(ahead) == kSlotFull)
        __builtin_prefetch(reinterpret_cast<const void*>(base + slot_record(ahead)));
    }
    uint64_t c = slots[n].load(std::memory_order_relaxed);
    if (slot_state(c) != kSlotFull) continue;
    uint64_t kl, vl;
    const RecordHeader* r = record(slot_record(c), &kl, &vl);
    if (!r) throw Error(Errc::Corrupt, "record out of bounds");
    // Live records never overlap, so together they fit in the heap.  Checking
    // that bounds what a walk can produce (keys() copies every key) by the
    // heap size, whatever a corrupt table points at.
    const uint64_t units = r->r_units;
    if (units == 0 || units > heap_units_ - walked_units ||
        kHeaderBytes + kl + vl > units * kUnit)
      throw Error(Errc::Corrupt, "stripe " + std::to_string(i) +
                                     " has records that overlap or overrun their blocks");
    walked_units += units;
    fn(r, kl, vl);
  }
}

std::vector<std::string> Dict::keys(bool atomic, std::vector<uint64_t>* key_set_seqs) {
  std::vector<std::string> out;
  if (key_set_seqs) key_set_seqs->assign(nstripes_, 1);  // odd: "not collected"
  // The counts may be corrupt, and so may max_keys (the header only bounds it
  // by 2^31): reserve no more than the heap could hold, one key per unit.
  out.reserve(std::min({size(), max_keys_, heap_units_}));
  uint64_t units = 0;  // over all stripes: the keys copied fit in the heap
  auto collect = [&](uint32_t i) {
    // Under the stripe lock no insert or delete is half done: even.
    if (key_set_seqs)
      (*key_set_seqs)[i] = stripe(i).s_change_seq.load(std::memory_order_relaxed);
    for_each_record(i, [&](const RecordHeader* r, uint64_t kl, uint64_t) {
      units += r->r_units;
      if (units > heap_units_)
        throw Error(Errc::Corrupt, "the index names more record bytes than the heap holds");
      out.emplace_back(reinterpret_cast<const char*>(r) + kHeaderBytes, kl);
    });
  };
  if (atomic) {
    AllStripesLock all(this);
    for (uint32_t i = 0; i < nstripes_; ++i) collect(i);
  } else {
    for (uint32_t i = 0; i < nstripes_; ++i) {
      StripeLock lock(this, i);
      collect(i);
    }
  }
  return out;
}

uint64_t Dict::visit_stripe(uint32_t i, ItemVisitor& visitor) {
  if (i >= nstripes_) throw Error(Errc::InvalidArgument, "no such stripe");
  StripeLock lock(this, i);
  for_each_record(i, [&](const RecordHeader* r, uint64_t kl, uint64_t vl) {
    const auto* key = reinterpret_cast<const char*>(r) + kHeaderBytes;
    const uint64_t voff = off_of(r) + kHeaderBytes + kl;
    visitor.item(key, kl, base_ + voff, vl, voff);
  });
  return stripe_write_mark(i);  // exact: no write of this stripe runs while we hold its lock
}

// Both counters only grow (a put that rolls back still used its stamp), so
// their sum is unchanged only if neither moved.  The acquire loads pair with
// the writers' release stores of the slots: a process that has seen a
// write's slot (or learned of its completion) reads the moved counter.
uint64_t Dict::stripe_write_mark(uint32_t i) const {
  const Stripe& s = stripe(i);
  return s.s_next_stamp.load(std::memory_order_acquire) +
         s.s_change_seq.load(std::memory_order_acquire);
}

bool Dict::key_set_unchanged(const std::vector<uint64_t>& seqs) const {
  if (seqs.size() != nstripes_) return false;
  for (uint32_t i = 0; i < nstripes_; ++i)
    if ((seqs[i] & 1) || stripe(i).s_change_seq.load(std::memory_order_acquire) != seqs[i])
      return false;
  return true;
}

Stats Dict::stats() {
  Stats st{};
  st.segment_bytes = size_;
  st.heap_bytes = heap_units_ * kUnit;
  st.max_keys = max_keys_;
  st.stripes = nstripes_;
  for (uint32_t i = 0; i < nstripes_; ++i) {
    StripeLock lock(this, i);
    Stripe& s = stripe(i);
    st.entries += s.s_count.load(std::memory_order_relaxed);
    uint64_t ref = s.s_table_ref.load(std::memory_order_relaxed);
    if (ref) st.table_bytes += table_units(table_log2(ref)) * kUnit;
    if (s.s_spare.load(std::memory_order_relaxed))
      st.spare_bytes += s.s_spare_units.load(std::memory_order_relaxed) * kUnit;
    for_each_record(i, [&](const RecordHeader* r, uint64_t kl, uint64_t vl) {
      st.key_bytes += kl;
      st.value_bytes += vl;
      st.record_bytes += r->r_units * kUnit;
    });
  }
  {
    AllocLock lock(this);
    st.used_bytes = hdr_->h_alloc.a_used_units.load(std::memory_order_relaxed) * kUnit;
    st.largest_free_bytes = largest_free_run() * kUnit;
  }
  st.free_bytes = st.heap_bytes - st.used_bytes;
  st.recoveries = hdr_->h_recoveries.load(std::memory_order_relaxed);
  return st;
}

std::vector<std::string> Dict::check_integrity() {
  std::vector<std::string> problems;
  AllStripesLock all(this);
  {
    AllocLock alock(this);
    std::vector<uint8_t> owner(heap_units_, 0);
    uint64_t expect_used = 0, total = 0;
    std::vector<uint64_t> live_records;  // sorted below, for the pin checks
    auto claim = [&](uint64_t off, uint64_t units, const char* what) {
      if (off < heap_off_ || (off - heap_off_) % kUnit || units == 0 ||
          (off - heap_off_) / kUnit + units > heap_units_) {
        problems.push_back(std::string(what) + " block out of bounds");
        return;
      }
      uint64_t first = (off - heap_off_) / kUnit;
      for (uint64_t u = first; u < first + units; ++u) {
        if (owner[u]) {
          problems.push_back(std::string(what) + " overlaps another block");
          return;
        }
        owner[u] = 1;
      }
      expect_used += units;
    };
    for (uint32_t i = 0; i < nstripes_; ++i) {
      Stripe& s = stripe(i);
      if (s.s_journal.j_op.load() != kOpNone) problems.push_back("stripe journal left open");
      if (s.s_table_gen.load() & 1) problems.push_back("stripe table generation left odd");
      if (s.s_change_seq.load() & 1) problems.push_back("stripe change sequence left odd");
      uint64_t ref = s.s_table_ref.load();
      uint64_t live = 0, tombs = 0;
      if (ref) {
        Slot* slots = table_slots(ref);
        if (!slots) {
          problems.push_back("table reference out of bounds");
          continue;
        }
        uint64_t cap = uint64_t(1) << table_log2(ref);
        claim(table_offset(ref), table_units(table_log2(ref)), "table");
        bool has_empty = false;
        for (uint64_t n = 0; n < cap; ++n) {
          uint64_t c = slots[n].load();
          if (slot_state(c) == kSlotEmpty) has_empty = true;
          if (slot_state(c) == kSlotTomb) ++tombs;
          if (slot_state(c) != kSlotFull) continue;
          ++live;
          uint64_t kl, vl;
          const RecordHeader* r = record(slot_record(c), &kl, &vl);
          if (!r) {
            problems.push_back("record out of bounds");
            continue;
          }
          if (stripe_of(r->r_hash) != i) problems.push_back("record in the wrong stripe");
          if (tag_of(r->r_hash) != slot_tag(c)) problems.push_back("slot tag mismatch");
          if (hash_key(reinterpret_cast<const uint8_t*>(r) + kHeaderBytes, kl,
                       hash_seed_) != r->r_hash)
            problems.push_back("record hash does not match its key");
          if (kHeaderBytes + kl + vl > r->r_units * kUnit)
            problems.push_back("record longer than its block");
          claim(slot_record(c), r->r_units, "record");
          live_records.push_back(slot_record(c));
        }
        if (!has_empty) problems.push_back("table has no empty slot");
      }
      if (uint64_t spare = s.s_spare.load()) {
        if (s.s_spare_units.load() > kSpareMaxUnits) problems.push_back("spare block too large");
        claim(spare, s.s_spare_units.load(), "spare");
      }
      if (live != s.s_count.load()) problems.push_back("stripe count differs from its table");
      if (tombs != s.s_tombs.load()) problems.push_back("stripe tombstone count differs");
      total += live;
    }
    // Pins: a reference names a live record; retired and building blocks are
    // owned by their entries (each block once, however many entries name it).
    std::sort(live_records.begin(), live_records.end());
    std::vector<uint64_t> pin_owned;
    for (uint32_t i = 0; i < kPinSlots; ++i) {
      const PinSlot& ps = pin_slot(i);
      if (ps.p_high.load() > pin_entries_) problems.push_back("pin slot high mark out of range");
      for (uint32_t e = 0; e < pin_entries_; ++e) {
        const PinEntry& en = pin_entry(i, e);
        const uint64_t v = en.e_ref.load();
        if (!v) continue;
        if (e >= pin_high(ps)) problems.push_back("pin entry in use above its slot's high mark");
        const uint64_t block = v & ~kPinStateMask, state = v & kPinStateMask;
        const bool live = std::binary_search(live_records.begin(), live_records.end(), block);
        if (state == 0) {
          if (!live) problems.push_back("a pin names a record that is not in the index");
        } else if (state == kPinRetired || state == kPinBuilding) {
          if (live) problems.push_back("a retired or building pin names a live record");
          else if (std::find(pin_owned.begin(), pin_owned.end(), block) == pin_owned.end()) {
            pin_owned.push_back(block);
            claim(block, en.e_units.load(), "pinned");
          }
        } else {
          problems.push_back("pin entry in an unknown state");
        }
      }
    }
    uint64_t bitmap_used = count_used_units();
    if (bitmap_used != expect_used)
      problems.push_back("allocator: " + std::to_string(bitmap_used) + " units marked used, " +
                         std::to_string(expect_used) + " owned by the index");
    for (uint64_t u = 0; u < heap_units_; ++u) {
      bool used = bitmap_[u / 64] >> (u % 64) & 1;
      if (used != bool(owner[u])) {
        problems.push_back("allocator bitmap disagrees with the index at unit " +
                           std::to_string(u));
        break;
      }
    }
    if (hdr_->h_alloc.a_used_units.load() != bitmap_used)
      problems.push_back("allocator used counter differs from its bitmap");
    if (hdr_->h_alloc.a_op.load() != kAllocNone) problems.push_back("allocator journal left open");
    // The reservation may run ahead of the keys after a crash (a recount is
    // then pending) but never behind them: that is what keeps max_keys.
    const uint64_t reserved = hdr_->h_reserved_keys.load();
    if (total > max_keys_)
      problems.push_back(std::to_string(total) + " keys present, more than max_keys " +
                         std::to_string(max_keys_));
    if (reserved > max_keys_)
      problems.push_back("reserved key count " + std::to_string(reserved) +
                         " is above max_keys " + std::to_string(max_keys_));
    if (reserved < total)
      problems.push_back("reserved key count " + std::to_string(reserved) + " is below the " +
                         std::to_string(total) + " keys present");
    else if (!hdr_->h_recount_needed.load() && reserved != total)
      problems.push_back("reserved key count " + std::to_string(reserved) + " differs from " +
                         std::to_string(total) + " keys");
  }
  return problems;
}

}  // namespace sbx
