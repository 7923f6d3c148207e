// recovery.cpp — the repair of a stripe whose lock holder died mid-write.
#include "sharedbox/crash_points.hpp"
#include "sharedbox/dict.hpp"
#include "sharedbox/locks.hpp"

namespace sbx {

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
  // A holder that died between the two halves of a publish left the publish
  // sequence odd; even again, it also differs from every value read before.
  uint64_t pub = s.s_publish_seq.load(std::memory_order_relaxed);
  if (pub & 1) s.s_publish_seq.store(pub + 1, std::memory_order_release);
  SBX_CRASH_POINT(recover_stripe_publish_even);
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

}  // namespace sbx
