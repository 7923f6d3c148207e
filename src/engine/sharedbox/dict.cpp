// dict.cpp — the index: per-stripe open-addressing tables, lock-free reads
// and journaled writes.  The repair of a stripe whose lock holder died is in
// recovery.cpp; operations over every stripe (keys, items, stats, integrity)
// in walk.cpp.
#include "sharedbox/dict.hpp"

#include <errno.h>

#include <cstring>

#include "sharedbox/crash_points.hpp"
#include "sharedbox/hash.hpp"
#include "sharedbox/locks.hpp"
#include "sharedbox/racy.hpp"
#include "sharedbox/robust_mutex.hpp"

namespace sbx {
namespace {

constexpr int kOptimisticReads = 8;  // lock-free tries before taking the stripe lock

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
// is checked against the heap before use (table_slots and record, inline in
// dict.hpp).

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

// Brackets a step of a put or erase with a sequence that is odd while the
// step is under way: Stripe::s_change_seq around the part during which
// s_count may disagree with the slots, Stripe::s_publish_seq around the
// publishing slot store.  The release fence orders the odd value before the
// step's stores; the even value is a release store after them.  Nothing
// between the two can throw.
void begin_odd(std::atomic<uint64_t>& seq) {
  uint64_t q = seq.load(std::memory_order_relaxed);
  seq.store((q + 1) | 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
}
void end_odd(std::atomic<uint64_t>& seq) {
  uint64_t q = seq.load(std::memory_order_relaxed);
  seq.store(q + 1, std::memory_order_release);
}
}  // namespace

uint64_t Dict::publish_seq(const KeyRef& k) const {
  return stripe(stripe_of(k.hash)).s_publish_seq.load(std::memory_order_acquire);
}

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
  racy_store(r->r_units, uint32_t(units));  // check_fits bounds it (kMaxRecordUnits)
  r->r_klen_flags.store(uint32_t(k.len), std::memory_order_relaxed);  // no flags yet
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
  PutDecision decision(src, mode);  // update_impl checks that it fits before changing anything
  return update(k, decision);
}

void Dict::throw_key_too_long(uint64_t key_bytes) {
  throw Error(Errc::InvalidArgument,
              "the key is " + std::to_string(key_bytes) + " bytes of UTF-8; a key may have at most " +
                  std::to_string(kMaxKeyBytes) + " bytes");
}

void Dict::throw_never_fits(uint64_t vmax) const {
  const uint64_t heap_bytes = heap_units_ * kUnit;
  if (heap_bytes > kMaxRecordUnits * kUnit && kHeaderBytes + vmax > kMaxRecordUnits * kUnit)
    throw Error(Errc::ValueTooLarge,
                "the value (" + std::to_string(vmax) + " bytes with its key) is larger than the " +
                    std::to_string(kMaxRecordUnits * kUnit) + " bytes one record may hold");
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
      begin_odd(s.s_change_seq);
      SBX_CRASH_POINT(put_change_begun);
    }
    begin_odd(s.s_publish_seq);
    SBX_CRASH_POINT(put_publish_begun);
    slots[slot_idx].store(make_full_slot(off, tag_of(k.hash)), std::memory_order_release);
    SBX_CRASH_POINT(put_published);
    end_odd(s.s_publish_seq);
    SBX_CRASH_POINT(put_publish_ended);
    if (!p.found) {
      s.s_count.store(count + 1, std::memory_order_relaxed);
      if (p.free_is_tomb) s.s_tombs.store(tombs - 1, std::memory_order_relaxed);
      SBX_CRASH_POINT(put_counted);
      end_odd(s.s_change_seq);
      SBX_CRASH_POINT(put_change_ended);
    }
    if (old_off) {
      retire_block(s, &j.j_old, old_units);
      SBX_CRASH_POINT(put_old_retired);
    }
    j.j_op.store(kOpNone, std::memory_order_release);
    SBX_CRASH_POINT(put_done);
    lock.unlock();
    SBX_CRASH_POINT(put_unlocked);
    notify_waiters(s);
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
  begin_odd(s.s_change_seq);
  SBX_CRASH_POINT(erase_change_begun);
  begin_odd(s.s_publish_seq);
  SBX_CRASH_POINT(erase_publish_begun);
  table_slots(ref)[p.idx].store(kSlotTomb, std::memory_order_release);
  SBX_CRASH_POINT(erase_published);
  end_odd(s.s_publish_seq);
  SBX_CRASH_POINT(erase_publish_ended);
  s.s_count.store(count - 1, std::memory_order_relaxed);
  s.s_tombs.store(tombs + 1, std::memory_order_relaxed);
  SBX_CRASH_POINT(erase_counted);
  end_odd(s.s_change_seq);
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
  lock.unlock();
  SBX_CRASH_POINT(erase_unlocked);
  notify_waiters(s);
  return true;
}

}  // namespace sbx
