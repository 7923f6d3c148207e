// walk.cpp — operations over every stripe: keys, items, stats and the
// integrity check.
#include <algorithm>

#include "sharedbox/dict.hpp"
#include "sharedbox/hash.hpp"
#include "sharedbox/locks.hpp"
#include "sharedbox/racy.hpp"

namespace sbx {

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
      if (s.s_publish_seq.load() & 1) problems.push_back("stripe publish sequence left odd");
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
