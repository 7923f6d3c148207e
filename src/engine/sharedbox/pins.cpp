// pins.cpp — zero-copy views: pinning records so that their blocks outlive
// overwrites and deletes, building a value in place and publishing it, and
// reclaiming the pins of processes that died.  The shared structures and
// their rules are in layout.hpp (PinSlot, PinEntry); docs/design.md has the
// crash-point table.
//
// How a block's ownership moves:
//   * A live record belongs to the index; entries that name it (state 0) are
//     references, not owners.
//   * An overwrite or erase of a record that entries name marks them retired
//     (hand_to_pins) and then drops the journal's claim (j_old = 0): from then
//     on the retired entries own the block together.  Recovery of a put or
//     erase does the same before it would free j_old, so a crash in between
//     cannot free a pinned block.
//   * The last retired entry to let go frees the block through itself (the
//     entry is the allocator's a_target, so the free replays after a crash).
//   * A building block belongs to its one entry (alloc stores off|building
//     into it); publish hands it to the put journal (j_new, stored first) and
//     then turns the entry into a reference (state 0).  A crash between the
//     two leaves both naming the block: recovery lets the journal win.
#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <thread>
#include <unordered_set>

#include "sharedbox/crash_points.hpp"
#include "sharedbox/dict.hpp"
#include "sharedbox/locks.hpp"
#include "sharedbox/pins.hpp"

namespace sbx {

// ---------------------------------------------------------------------------
// The keeper thread.

namespace keeper {
namespace {

enum class Op { TryLock, Consistent, Unlock };

struct Request {
  Op op;
  pthread_mutex_t* m;
  int rc = 0;
  bool done = false;
};

struct State {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Request*> queue;
  pid_t running_in = 0;  // the process whose keeper thread serves this queue
};

// Replaced, never destroyed, in a forked child: the parent's keeper thread
// does not exist there, and its condition variable may still count it.
std::atomic<State*> g_state{nullptr};
std::once_flag g_fork_handlers;

State* state() {
  State* s = g_state.load(std::memory_order_acquire);
  if (!s) {
    State* fresh = new State;
    if (!g_state.compare_exchange_strong(s, fresh)) delete fresh;
    else s = fresh;
  }
  return s;
}

void serve(State* s) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);  // signals are for the Python threads
  std::unique_lock<std::mutex> lk(s->mu);
  for (;;) {
    s->cv.wait(lk, [&] { return !s->queue.empty(); });
    Request* r = s->queue.front();
    s->queue.pop_front();
    switch (r->op) {
      case Op::TryLock: r->rc = pthread_mutex_trylock(r->m); break;
      case Op::Consistent: r->rc = pthread_mutex_consistent(r->m); break;
      case Op::Unlock: r->rc = pthread_mutex_unlock(r->m); break;
    }
    r->done = true;
    s->cv.notify_all();
  }
}

int call(Op op, pthread_mutex_t* m) {
  std::call_once(g_fork_handlers, [] {
    pthread_atfork([] { state()->mu.lock(); }, [] { state()->mu.unlock(); },
                   [] { g_state.store(new State, std::memory_order_release); });
  });
  State* s = state();
  std::unique_lock<std::mutex> lk(s->mu);
  if (s->running_in != ::getpid()) {
    try {
      std::thread(serve, s).detach();
    } catch (const std::system_error& e) {
      throw Error(Errc::System, std::string("cannot start the pin keeper thread: ") + e.what());
    }
    s->running_in = ::getpid();
  }
  Request r{op, m};
  s->queue.push_back(&r);
  s->cv.notify_all();
  s->cv.wait(lk, [&] { return r.done; });
  return r.rc;
}

}  // namespace

int trylock(pthread_mutex_t* m) { return call(Op::TryLock, m); }
void make_consistent(pthread_mutex_t* m) { call(Op::Consistent, m); }
void unlock(pthread_mutex_t* m) { call(Op::Unlock, m); }

}  // namespace keeper

// ---------------------------------------------------------------------------
// Slots.

namespace {
// getpid() is a system call; pins ask for it on every view.  Kept here and
// refreshed in a forked child.
std::atomic<uint32_t> g_pid{0};
std::once_flag g_pid_fork_handler;
uint32_t current_pid() {
  uint32_t pid = g_pid.load(std::memory_order_relaxed);
  if (pid) return pid;
  std::call_once(g_pid_fork_handler, [] {
    pthread_atfork(nullptr, nullptr, [] { g_pid.store(0, std::memory_order_relaxed); });
  });
  pid = uint32_t(::getpid());
  g_pid.store(pid, std::memory_order_relaxed);
  return pid;
}
}  // namespace

int Dict::pins_slot() const { return pins_->slot; }

uint32_t Dict::pin_high(const PinSlot& s) const {
  return std::min(s.p_high.load(std::memory_order_acquire), pin_entries_);
}

// Makes sure this process owns a slot (pins_->m held).  A forked child
// inherits the parent's fields but not its slot: it starts over.
void Dict::claim_pin_slot() {
  ProcessPins& pp = *pins_;
  const uint32_t me = current_pid();
  if (pp.pid == me && pp.slot >= 0) return;
  pp.pid = me;
  pp.slot = -1;
  pp.entry_of.clear();
  reclaim_dead_pins();
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    PinSlot& s = pin_slot(i);
    if (s.p_pid.load(std::memory_order_acquire) != 0) continue;
    const int rc = keeper::trylock(&s.p_mutex);
    if (rc != 0 && rc != EOWNERDEAD) continue;  // taken meanwhile (EBUSY)
    // Ours now.  A slot left by a dead owner (or by a reclaimer that died)
    // may still hold entries: release them before using it.
    try {
      release_slot_entries(i);
    } catch (...) {
      if (rc == EOWNERDEAD) keeper::make_consistent(&s.p_mutex);
      keeper::unlock(&s.p_mutex);
      throw;
    }
    if (rc == EOWNERDEAD) keeper::make_consistent(&s.p_mutex);
    s.p_pid.store(me, std::memory_order_release);
    SBX_CRASH_POINT(pin_slot_claimed);
    pp.slot = int(i);
    pp.free_entries.clear();
    for (uint32_t e = pin_entries_; e-- > 0;) pp.free_entries.push_back(e);
    pp.views.assign(pin_entries_, 0);
    return;
  }
  throw Error(Errc::TooManyViews,
              "no pin slot is free in SharedDict '" + name_ + "': " +
                  std::to_string(kPinSlots) + " processes already hold views of it");
}

// At unmap (Dict destruction): every Pin holds the Dict, so none is left;
// hand the slot back for another process.
void Dict::release_pin_slot() {
  if (!pins_) return;
  ProcessPins& pp = *pins_;
  std::lock_guard<std::mutex> hold(pp.m);
  if (pp.slot < 0 || pp.pid != current_pid()) return;  // none, or the parent's
  PinSlot& s = pin_slot(uint32_t(pp.slot));
  try {
    release_slot_entries(uint32_t(pp.slot));
  } catch (...) {
    return;  // corrupt: keep the slot (a later sweep sees a dead owner and retries)
  }
  s.p_pid.store(0, std::memory_order_release);
  keeper::unlock(&s.p_mutex);
  pp.slot = -1;
}

// Releases every entry of a slot whose owner is gone or is us at unmap (the
// slot's mutex is held by the caller or its keeper).
void Dict::release_slot_entries(uint32_t slot) {
  PinSlot& s = pin_slot(slot);
  // The owner may have died inside alloc() or free_block() with one of these
  // entries as the target: replay that first, or the replay would fill an
  // entry after we had released it (Dict::lock_alloc replays).
  { AllocLock settle(this); }
  const uint32_t high = pin_high(s);
  for (uint32_t e = 0; e < high; ++e) {
    release_pin_entry(slot, e);
    SBX_CRASH_POINT(reclaim_entry_released);
  }
  s.p_high.store(0, std::memory_order_release);
}

// Lets go of one entry: a building block is freed; a reference to a live
// record is cleared; a retired record is freed by its last entry.
void Dict::release_pin_entry(uint32_t slot, uint32_t e) {
  PinEntry& en = pin_entry(slot, e);
  uint64_t v = en.e_ref.load(std::memory_order_acquire);
  if (!v) return;
  // A reference to a live record lets go with one CAS, without the stripe
  // lock: the common case of a view that dies.  If an overwrite retired the
  // entry meanwhile (hand_to_pins CASes too), the CAS fails and the entry
  // now co-owns the block: the locked path below decides who frees it.
  if ((v & kPinStateMask) == 0 && en.e_ref.compare_exchange_strong(v, 0, std::memory_order_acq_rel)) {
    SBX_CRASH_POINT(unpin_entry_cleared);
    return;
  }
  if (!v) return;
  const uint64_t block = v & ~kPinStateMask;
  const uint64_t units = en.e_units.load(std::memory_order_relaxed);
  // This entry keeps the block allocated, so the hash in its header selects
  // the record's stripe; take that lock (its recovery runs first, which
  // settles a publish that died half way, see drop_pins_of).  A building
  // block whose header was never written has a garbage hash: then no publish
  // can have started, and any stripe's lock will do.
  if (block < heap_off_ || block > size_ - sizeof(RecordHeader))
    throw Error(Errc::Corrupt, "a pin names a block out of bounds");
  const uint64_t hash = __atomic_load_n(&reinterpret_cast<const RecordHeader*>(base_ + block)->r_hash,
                                        __ATOMIC_RELAXED);
  StripeLock lock(this, stripe_of(hash));
  v = en.e_ref.load(std::memory_order_acquire);  // retired, published or dropped meanwhile?
  if (!v) return;
  if (v & kPinBuilding) {  // ours alone, not in any stripe
    free_block(&en.e_ref, units);
    SBX_CRASH_POINT(unpin_block_freed);
    return;
  }
  if ((v & kPinRetired) && !other_pins_of(block, &en)) {
    free_block(&en.e_ref, units);
    SBX_CRASH_POINT(unpin_block_freed);
  } else {
    en.e_ref.store(0, std::memory_order_release);
    SBX_CRASH_POINT(unpin_entry_cleared);
  }
}

// Whether an entry other than `except` names `block` (its stripe lock held).
bool Dict::other_pins_of(uint64_t block, const PinEntry* except) const {
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    const uint32_t high = pin_high(pin_slot(i));
    for (uint32_t e = 0; e < high; ++e) {
      const PinEntry& en = pin_entry(i, e);
      if (&en != except &&
          (en.e_ref.load(std::memory_order_acquire) & ~kPinStateMask) == block)
        return true;
    }
  }
  return false;
}

// Called where a record leaves the index (*target names it, the stripe lock
// is held): if entries pin it, they take the block over (marked retired) and
// *target lets go; returns whether they did.  Idempotent, for recovery.
bool Dict::hand_to_pins(std::atomic<uint64_t>* target) {
  const uint64_t block = target->load(std::memory_order_relaxed);
  uint64_t kl, vl;
  const RecordHeader* r = block ? record(block, &kl, &vl) : nullptr;
  if (!r || !(r->r_klen_flags.load(std::memory_order_relaxed) & kRecordPinned)) return false;
  bool pinned = false;
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    const uint32_t high = pin_high(pin_slot(i));
    for (uint32_t e = 0; e < high; ++e) {
      PinEntry& en = pin_entry(i, e);
      uint64_t v = en.e_ref.load(std::memory_order_acquire);
      if ((v & ~kPinStateMask) != block || (v & kPinBuilding)) continue;
      // A CAS, because the owner may let a reference go without the lock
      // (release_pin_entry); if it did, the entry no longer pins the block.
      if (!(v & kPinRetired) &&
          !en.e_ref.compare_exchange_strong(v, block | kPinRetired, std::memory_order_acq_rel))
        continue;
      pinned = true;
    }
  }
  if (!pinned) return false;
  SBX_CRASH_POINT(retire_pins_marked);
  target->store(0, std::memory_order_release);
  SBX_CRASH_POINT(retire_handed_to_pins);
  return true;
}

void Dict::free_or_hand_to_pins(std::atomic<uint64_t>* target, uint64_t units) {
  if (!hand_to_pins(target)) free_block(target, units);
}

// Recovery of a publish that did not happen: entries that name its block
// (the dead builder's) give way to the journal, which frees it.
void Dict::drop_pins_of(uint64_t block) {
  if (!block) return;
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    const uint32_t high = pin_high(pin_slot(i));
    for (uint32_t e = 0; e < high; ++e) {
      PinEntry& en = pin_entry(i, e);
      if ((en.e_ref.load(std::memory_order_acquire) & ~kPinStateMask) == block) {
        en.e_ref.store(0, std::memory_order_release);
        SBX_CRASH_POINT(recover_build_pin_dropped);
      }
    }
  }
}

// Whether `target` is the e_ref word of a pin entry (allocator journal check).
bool Dict::is_pin_target(uint64_t target) const {
  const uint64_t first = uint64_t(pin_base_ - base_);
  if (target < first || target >= first + uint64_t(kPinSlots) * pin_stride_) return false;
  const uint64_t in = (target - first) % pin_stride_;
  return in >= sizeof(PinSlot) && (in - sizeof(PinSlot)) % sizeof(PinEntry) == 0;
}

// Frees the pins of every slot whose owner died.  Any thread may do this: it
// holds a dead slot's mutex only while it releases the entries, then makes
// the mutex consistent and unlocks it (the slot is free again).  A sweeper
// that dies meanwhile leaves the mutex owner-dead again; the next one redoes
// the (idempotent) release.
uint32_t Dict::reclaim_dead_pins() {
  uint32_t freed = 0;
  const uint32_t me = current_pid();
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    PinSlot& s = pin_slot(i);
    const uint32_t pid = s.p_pid.load(std::memory_order_acquire);
    if (pid == me || (pid == 0 && s.p_high.load(std::memory_order_acquire) == 0)) continue;
    const int rc = pthread_mutex_trylock(&s.p_mutex);
    if (rc == EOWNERDEAD) {
      SBX_CRASH_POINT(reclaim_slot_locked);
      try {
        release_slot_entries(i);
      } catch (...) {
        pthread_mutex_consistent(&s.p_mutex);
        pthread_mutex_unlock(&s.p_mutex);
        throw;
      }
      s.p_pid.store(0, std::memory_order_release);
      SBX_CRASH_POINT(reclaim_slot_cleared);
      pthread_mutex_consistent(&s.p_mutex);
      pthread_mutex_unlock(&s.p_mutex);
      hdr_->h_recoveries.fetch_add(1, std::memory_order_relaxed);
      ++freed;
    } else if (rc == 0) {
      // Free already (a clean release, or one racing with us): nothing to do.
      pthread_mutex_unlock(&s.p_mutex);
    }
    // EBUSY: a live owner.  Anything else (ENOTRECOVERABLE): leave it.
  }
  return freed;
}

// ---------------------------------------------------------------------------
// Pin, unpin, build, publish.

// A free entry of this process's slot (pins_->m held); it stays on the free
// list until the caller has filled it.
uint32_t Dict::free_pin_entry() const {
  if (pins_->free_entries.empty())
    throw Error(Errc::TooManyViews,
                "this process holds " + std::to_string(pin_entries_) + " pins of SharedDict '" +
                    name_ + "', the most one process may; release views it no longer needs");
  return pins_->free_entries.back();
}

bool Dict::pin(const KeyRef& k, PinCheck& check, Pin* out) {
  ProcessPins& pp = *pins_;
  std::lock_guard<std::mutex> hold(pp.m);
  claim_pin_slot();
  const uint32_t slot = uint32_t(pp.slot);
  const uint32_t si = stripe_of(k.hash);
  StripeLock lock(this, si);
  Probe p = find_locked(stripe(si), k);
  if (!p.found) return false;
  const uint64_t block = slot_record(p.ctl);
  uint64_t kl, vl;
  RecordHeader* r = const_cast<RecordHeader*>(record(block, &kl, &vl));
  if (!r) throw Error(Errc::Corrupt, "record out of bounds");
  const uint64_t voff = block + kHeaderBytes + kl;
  check.check(base_ + voff, vl, voff);  // may refuse: nothing changed yet
  out->block = block;
  out->pid = pp.pid;
  out->value = base_ + voff;
  out->value_len = vl;
  out->value_off = voff;
  out->data_at = 0;
  auto known = pp.entry_of.find(block);
  if (known != pp.entry_of.end()) {  // this process pins it already: share the entry
    out->entry = known->second;
    ++pp.views[known->second];
    return true;
  }
  const uint32_t e = free_pin_entry();
  PinEntry& en = pin_entry(slot, e);
  en.e_units.store(r->r_units, std::memory_order_relaxed);
  r->r_klen_flags.fetch_or(kRecordPinned, std::memory_order_relaxed);
  SBX_CRASH_POINT(pin_record_flagged);
  PinSlot& s = pin_slot(slot);
  if (e >= s.p_high.load(std::memory_order_relaxed)) s.p_high.store(e + 1, std::memory_order_release);
  en.e_ref.store(block, std::memory_order_release);
  SBX_CRASH_POINT(pin_entry_set);
  pp.free_entries.pop_back();
  pp.views[e] = 1;
  pp.entry_of.emplace(block, e);
  out->entry = e;
  return true;
}

void Dict::unpin(const Pin& p) {
  ProcessPins& pp = *pins_;
  std::lock_guard<std::mutex> hold(pp.m);
  // Inherited over fork: the pin is the parent's, not ours to release.
  if (p.pid != current_pid() || pp.pid != p.pid || pp.slot < 0) return;
  if (p.entry >= pp.views.size() || pp.views[p.entry] == 0)
    throw Error(Errc::InvalidArgument, "unpin of a pin this process does not hold");
  if (--pp.views[p.entry] > 0) return;
  auto known = pp.entry_of.find(p.block);
  if (known != pp.entry_of.end() && known->second == p.entry) pp.entry_of.erase(known);
  release_pin_entry(uint32_t(pp.slot), p.entry);
  pp.free_entries.push_back(p.entry);
}

void Dict::begin_build(const KeyRef& k, ValueSource& head, uint64_t data_bytes, Pin* out) {
  const uint64_t vmax = head.max_bytes();
  if (vmax < data_bytes) throw Error(Errc::InvalidArgument, "value head smaller than its data");
  check_fits(k, vmax);
  ProcessPins& pp = *pins_;
  std::lock_guard<std::mutex> hold(pp.m);
  claim_pin_slot();
  const uint32_t slot = uint32_t(pp.slot);
  const uint32_t e = free_pin_entry();
  PinEntry& en = pin_entry(slot, e);
  PinSlot& s = pin_slot(slot);
  const uint64_t units = size_class((kHeaderBytes + k.len + vmax + kUnit - 1) / kUnit).units;
  en.e_units.store(units, std::memory_order_relaxed);
  if (e >= s.p_high.load(std::memory_order_relaxed)) s.p_high.store(e + 1, std::memory_order_release);
  uint64_t off = alloc(units, &en.e_ref, false, kPinBuilding);
  if (!off && (reclaim_spares() | (reclaim_dead_pins() > 0)))
    off = alloc(units, &en.e_ref, false, kPinBuilding);
  if (!off)
    throw Error(Errc::SegmentFull,
                "the segment '" + name_ + "' is full: no free block of " +
                    std::to_string(units * kUnit) + " bytes for this value; delete keys, "
                    "release views, or create a larger SharedDict (see recommend_sizing())");
  SBX_CRASH_POINT(build_block_allocated);
  // The block is unpublished: only lock-free readers of what it held before
  // can see it, and the odd stamp (with the fence) makes them discard that.
  auto* r = reinterpret_cast<RecordHeader*>(base_ + off);
  r->r_stamp.store(kStampBuilding, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  __atomic_store_n(&r->r_hash, k.hash, __ATOMIC_RELAXED);
  __atomic_store_n(&r->r_units, uint32_t(units), __ATOMIC_RELAXED);  // bounded by check_fits
  r->r_klen_flags.store(uint32_t(k.len) | kRecordPinned, std::memory_order_relaxed);
  std::memcpy(base_ + off + kHeaderBytes, k.data, k.len);
  const uint64_t voff = off + kHeaderBytes + k.len;
  const uint64_t head_len = head.write(base_ + voff, voff);
  if (head_len + data_bytes > vmax) {
    free_block(&en.e_ref, units);
    throw Error(Errc::Corrupt, "value writer overran its declared size");
  }
  __atomic_store_n(&r->r_vlen, head_len + data_bytes, __ATOMIC_RELAXED);
  SBX_CRASH_POINT(build_record_written);
  pp.free_entries.pop_back();
  pp.views[e] = 1;
  out->entry = e;
  out->block = off;
  out->pid = pp.pid;
  out->value = base_ + voff;
  out->value_len = head_len + data_bytes;
  out->value_off = voff;
  out->data_at = head_len;
}

namespace {
// publish_built() as an update: always store; the block is already written.
class StoreBuilt : public UpdateFn, public ValueSource {
 public:
  ValueSource* decide(const uint8_t*, uint64_t, bool) override { return this; }
  uint64_t max_bytes() const override { return 0; }
  uint64_t write(uint8_t*, uint64_t) override { return 0; }
};
}  // namespace

void Dict::publish_built(const KeyRef& k, const Pin& p) {
  ProcessPins& pp = *pins_;
  std::lock_guard<std::mutex> hold(pp.m);
  if (p.pid != current_pid() || pp.pid != p.pid || pp.slot < 0 ||
      p.entry >= pp.views.size() || pp.views[p.entry] == 0)
    throw Error(Errc::InvalidArgument, "publish of a block this process is not building");
  const uint64_t v = pin_entry(uint32_t(pp.slot), p.entry).e_ref.load(std::memory_order_acquire);
  if (v != (p.block | kPinBuilding))
    throw Error(Errc::InvalidArgument, "this block was published already");
  if (!record_matches(p.block, k))
    throw Error(Errc::InvalidArgument, "publish under a key other than the one built for");
  StoreBuilt store;
  update_impl(k, store, &p);
  pp.entry_of.emplace(p.block, p.entry);  // now a reference to a live record
}

PinStats Dict::pin_stats() {
  reclaim_dead_pins();
  PinStats st;
  st.max_pins_per_process = pin_entries_;
  std::unordered_set<uint64_t> owned;  // blocks that only pins keep
  for (uint32_t i = 0; i < kPinSlots; ++i) {
    const PinSlot& s = pin_slot(i);
    const uint32_t high = pin_high(s);
    uint64_t n = 0;
    for (uint32_t e = 0; e < high; ++e) {
      const PinEntry& en = pin_entry(i, e);
      const uint64_t v = en.e_ref.load(std::memory_order_acquire);
      if (!v) continue;
      ++n;
      if ((v & (kPinRetired | kPinBuilding)) && owned.insert(v & ~kPinStateMask).second)
        st.pinned_bytes += en.e_units.load(std::memory_order_relaxed) * kUnit;
    }
    st.pins += n;
    if (n) st.holders.push_back({s.p_pid.load(std::memory_order_acquire), n});
  }
  return st;
}

}  // namespace sbx
