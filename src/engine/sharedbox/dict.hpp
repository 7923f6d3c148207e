// dict.hpp — sbx::Dict, a string-keyed map of byte values in one named POSIX
// shared-memory segment.  No Python here: bytes in, bytes out.
//
// Guarantees (what every process mapping the segment may rely on):
//   * Every single-key operation (get, contains, put, erase) is linearizable.
//   * get/contains take no lock and write nothing to shared memory; they
//     validate what they copied and retry (falling back to the stripe lock
//     after a few failed tries, so they cannot starve).
//   * put/erase hold one stripe lock; keys on different stripes never contend.
//   * keys(atomic=true) holds every stripe lock: a point-in-time snapshot.
//   * Any process may die at any instruction: the robust locks report the dead
//     owner to the next process, which replays the owner's journal (see
//     layout.hpp and docs/design.md).
//
// Differences from std::unordered_map: values are copied in and out (a
// ValueSource writes, a ValueSink reads), capacity is fixed by max_keys and the
// segment size, and failures throw sbx::Error with a code.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sharedbox/errors.hpp"
#include "sharedbox/layout.hpp"
#include "sharedbox/racy.hpp"

namespace sbx {

struct OpenOptions {
  std::string name;            // without the leading '/'
  bool create = true;          // create if missing (else attach only)
  uint64_t size = 128ull << 20;
  uint64_t max_keys = 128;
  uint32_t stripes = 0;        // 0 = default_stripes(max_keys)
  uint32_t mode = 0600;
};

// A key prepared for lookup: its UTF-8 bytes and its hash in this segment.
struct KeyRef {
  const char* data;
  uint32_t len;
  uint64_t hash;
};

// Writes one value into its record.  max_bytes() bounds what write() may
// produce; write() gets the destination and its offset in the segment (for
// alignment) and returns the byte count it wrote.  Called with the stripe
// lock held: it must not block on anything another process could hold.
class ValueSource {
 public:
  virtual ~ValueSource() = default;
  virtual uint64_t max_bytes() const = 0;
  virtual uint64_t write(uint8_t* dst, uint64_t dst_segment_offset) = 0;
};

// Receives a copy of one value.  take() may be handed bytes that are being
// freed under it (lock-free reads); the engine validates afterwards and, if
// the copy is stale, calls reset() and tries again.  So take() must only copy,
// must bounds-check what it parses, and may throw on garbage.  under_lock is
// true when the stripe lock is held (then the copy is stable, and take() must
// not wait for anything, e.g. Python's GIL).
class ValueSink {
 public:
  virtual ~ValueSink() = default;
  virtual void take(const uint8_t* value, uint64_t len, uint64_t segment_offset,
                    bool under_lock) = 0;
  virtual void reset() = 0;
};

enum class PutMode { Always, IfAbsent };

enum class LockResult { Acquired, AcquiredRecovered, TimedOut };

// Receives the items of one stripe, under its lock (Dict::visit_stripe): like
// ValueSink::take under a lock, item() must only copy.
class ItemVisitor {
 public:
  virtual ~ItemVisitor() = default;
  virtual void item(const char* key, uint64_t key_len, const uint8_t* value, uint64_t value_len,
                    uint64_t value_segment_offset) = 0;
};

// A read-modify-write (Dict::update): decide() sees the key's current value
// (present = false: absent) and returns what to store, or nullptr to leave
// the key as it is.  It runs under the stripe lock, so, like take() under a
// lock, it must only compute: no waiting, no Python.  It may throw; nothing
// has changed then.
class UpdateFn {
 public:
  virtual ~UpdateFn() = default;
  virtual ValueSource* decide(const uint8_t* value, uint64_t len, bool present) = 0;
};

// A pin this process holds (Dict::pin, Dict::begin_build): what a view keeps
// and hands back to Dict::unpin exactly once.  `value` stays valid and
// unchanged until then, whatever other processes do to the key.
struct Pin {
  uint32_t entry = 0;          // index in this process's PinSlot
  uint64_t block = 0;          // segment offset of the record
  uint32_t pid = 0;            // process that took it: a forked child must not release it
  uint8_t* value = nullptr;    // the value, in place
  uint64_t value_len = 0;
  uint64_t value_off = 0;      // segment offset of the value (alignment)
  uint64_t data_at = 0;        // begin_build: where the caller's data starts in the value
};

// Decides, under the stripe lock, whether a value may be pinned (Dict::pin):
// like ValueSink::take under a lock, it must only compute; it throws to refuse.
class PinCheck {
 public:
  virtual ~PinCheck() = default;
  virtual void check(const uint8_t* value, uint64_t len, uint64_t segment_offset) = 0;
};

struct PinHolder {
  uint32_t pid;
  uint64_t pins;
};

struct PinStats {
  uint64_t pins = 0;          // entries in use, all processes
  uint64_t pinned_bytes = 0;  // blocks only pins keep: retired records and blocks being built
  uint32_t max_pins_per_process = 0;
  std::vector<PinHolder> holders;
};

struct Stats {
  uint64_t segment_bytes, heap_bytes, used_bytes, free_bytes;
  uint64_t max_keys, entries, stripes, recoveries;
  uint64_t key_bytes, value_bytes, record_bytes, table_bytes;
  uint64_t largest_free_bytes;  // biggest block that could be allocated now
  uint64_t spare_bytes;         // freed blocks the stripes keep for their next write
};

uint32_t default_stripes(uint64_t max_keys);

// An allocation size class (allocator.cpp): its index in
// AllocState::a_class_hint and the size, in units, requests are rounded to.
struct SizeClass {
  uint32_t index;
  uint64_t units;
};
SizeClass size_class(uint64_t units);
// The size of class c (c >= kExactClasses).
inline uint64_t size_class_units(uint32_t c) {
  if (c < kExactClasses) return c + 1;
  const uint32_t k = 4 + (c - kExactClasses) / 8;
  const uint64_t step = uint64_t(1) << (k - 3);
  return (uint64_t(1) << k) + ((c - kExactClasses) % 8 + 1) * step;
}
// Heap bytes (records + index tables) in a new segment of `size` bytes with
// `stripes` stripes; 0 if that size is too small.
uint64_t heap_bytes_for(uint64_t size, uint32_t stripes);

class Dict {
 public:
  // Creates (if allowed) or attaches.  *created says which happened.
  static std::unique_ptr<Dict> open(const OpenOptions& opts, bool* created = nullptr);
  // Removes the name; mappings stay valid until closed.
  static void unlink(const std::string& name);
  static void validate_name(const std::string& name);

  ~Dict();
  Dict(const Dict&) = delete;
  Dict& operator=(const Dict&) = delete;

  KeyRef key(const char* data, size_t len) const;

  // *stamp (if given) receives the record's stamp, validated with the copy.
  bool get(const KeyRef& k, ValueSink& sink, uint64_t* stamp = nullptr);
  bool contains(const KeyRef& k);
  // Returns true if the value was stored (false only for IfAbsent on a present key).
  bool put(const KeyRef& k, ValueSource& src, PutMode mode = PutMode::Always);
  // Stores what fn decides from the current value, atomically (see UpdateFn).
  // Returns true if a value was stored.
  bool update(const KeyRef& k, UpdateFn& fn) { return update_impl(k, fn, nullptr); }
  // Removes the key; if old_value is given it receives the removed value
  // (under the lock, before removal).  Returns false if the key was absent.
  bool erase(const KeyRef& k, ValueSink* old_value = nullptr);

  // A hint with no effect on any result: starts loading, for writing, the
  // table slot where a lookup of k begins and the first two lines of the
  // stripe's spare block (which a small put's record usually fills).  A put
  // calls it before encoding its value, so that in a large table those cache
  // misses overlap the encoding instead of stalling the put under the stripe
  // lock (measured: the slot 13-17% off a 4-key dict or 3-tuple set in a
  // 120,000-key store; the spare another 3-8% off a small str or int set).
  // It loads s_spare (racily: any value is only a hint, bounds-checked) but
  // not the slot: the lock's atomic instruction waits for every earlier load,
  // and loading the slot to prefetch the record too was slower, not faster.
  void prefetch_for_put(const KeyRef& k) const;

  // Coordination (coordination.cpp).  A key's version changes on every write
  // of it and is never reused in the segment's life; false if absent.
  bool version(const KeyRef& k, uint64_t* v);
  // Waits until the key's version differs from `seen` (0: absent), using no
  // CPU while it waits (a futex), at most timeout_s.  true and *now = the
  // version (0: absent) if it changed; false on timeout, or early when a
  // signal arrives (so that the caller can handle it and wait again).
  bool wait_change(const KeyRef& k, uint64_t seen, double timeout_s, uint64_t* now);
  // Named cross-process locks: the slot for a name (claimed on first use;
  // Errc::TooManyLocks when none is left), then lock/unlock by slot.
  // timeout_s <= 0 tries once.  unlock throws Errc::LockMisuse for a lock
  // the calling thread does not hold.
  uint32_t named_lock(const std::string& name);
  LockResult lock_named(uint32_t slot, double timeout_s);
  void unlock_named(uint32_t slot);
  bool named_locked(uint32_t slot);

  uint64_t size() const;        // sum of the stripe counts, each read once (cheap)
  uint64_t exact_size();        // the keys present at one instant (len())
  // All keys.  atomic=true: every stripe locked at once (a snapshot).
  // atomic=false: one stripe at a time (weakly consistent, each key whole).
  // key_set_seqs (if given) receives each stripe's s_change_seq as it was
  // when that stripe's keys were collected; see key_set_unchanged().
  std::vector<std::string> keys(bool atomic, std::vector<uint64_t>* key_set_seqs = nullptr);
  // Every item of stripe i, under its lock (weakly consistent across stripes,
  // each item whole): what items() and values() walk, a stripe at a time.
  // Returns the stripe's write mark as it was during the visit.
  uint64_t visit_stripe(uint32_t i, ItemVisitor& visitor);
  // A number that moves before any put or erase of stripe i publishes, and
  // never moves back: the sum of s_next_stamp (every put takes a stamp
  // before its slot store) and s_change_seq (every erase moves it before its
  // tombstone store; recovery only moves it forward).  If a process reads the
  // same mark that visit_stripe returned, no write to the stripe has become
  // visible since the visit, nor completed: what the visit saw is still
  // every item of the stripe (the items() cache relies on this).  Lock-free.
  uint64_t stripe_write_mark(uint32_t i) const;
  // The publish sequence of the key's stripe (Stripe::s_publish_seq): odd
  // while a put or erase of the stripe is publishing, and moved by every
  // one.  If it reads the same even number before a read of key k and again
  // later, no put or erase of the stripe has published since: the value
  // read is still k's current value (or k is still absent).  Lock-free; an
  // acquire load, so a read made after it sees every publish it counts.
  uint64_t publish_seq(const KeyRef& k) const;
  // Whether no key was inserted or deleted since keys() returned these
  // sequences (each stripe's s_change_seq moves on every insert and delete,
  // and recovery moves it too).  If so, that key list is the set of keys
  // present at the instant of this check: a point-in-time snapshot.
  bool key_set_unchanged(const std::vector<uint64_t>& seqs) const;
  Stats stats();

  // Zero-copy (pins.cpp).  pin() pins the record of k, if present and if
  // check accepts its value: the value then stays in place, unchanged, until
  // unpin(), even if the key is overwritten or deleted (the block is freed by
  // whoever lets go of it last).  Throws Errc::TooManyViews when this process
  // holds max_pins_per_process pins or no pin slot is free.
  bool pin(const KeyRef& k, PinCheck& check, Pin* out);
  void unpin(const Pin& p);
  // A block for k's next value that the caller fills in place: head writes
  // the start of the value (at most head.max_bytes() - data_bytes bytes), the
  // caller the data_bytes after it (at out->value + out->data_at).
  // publish_built() makes it k's value, atomically, and p then pins the
  // published record; unpin() without publishing frees it.
  void begin_build(const KeyRef& k, ValueSource& head, uint64_t data_bytes, Pin* out);
  void publish_built(const KeyRef& k, const Pin& p);
  // Frees the pins of processes that died; returns how many slots it freed.
  uint32_t reclaim_dead_pins();
  PinStats pin_stats();

  // Checks every invariant under all locks; returns the violations (empty = OK).
  std::vector<std::string> check_integrity();

  const std::string& name() const { return name_; }
  uint64_t segment_bytes() const { return size_; }
  uint64_t max_keys() const { return max_keys_; }
  uint32_t stripe_count() const { return nstripes_; }
  uint32_t creator_pid() const { return creator_pid_; }
  uint32_t mode() const { return mode_; }
  // Identity of this segment, from the header copy taken at attach: the
  // binding compares it with the header behind the name now, to tell a
  // replaced segment apart.
  uint64_t created_unix_ns() const { return created_unix_ns_; }
  uint64_t hash_seed() const { return hash_seed_; }

 private:
  Dict(std::string name, uint8_t* base, uint64_t size, int fd, const SegmentHeader& identity);
  friend class StripeLock;
  friend class AllocLock;
  friend class AllStripesLock;

  struct Probe {
    bool found = false;
    uint64_t idx = 0;        // slot of the key if found
    uint64_t ctl = 0;
    bool has_free = false;   // first tombstone/empty slot on the probe path
    uint64_t free_idx = 0;
    bool free_is_tomb = false;
  };

  Stripe& stripe(uint32_t i) const;
  uint32_t stripe_of(uint64_t hash) const { return uint32_t(hash >> 40) & (nstripes_ - 1); }
  Slot* table_slots(uint64_t ref) const;  // nullptr if ref is out of bounds
  const RecordHeader* record(uint64_t off, uint64_t* klen, uint64_t* vlen) const;
  bool record_matches(uint64_t off, const KeyRef& k) const;
  // Whether record r, whose key length record() returned, holds key k.
  bool holds_key(const RecordHeader* r, uint64_t klen, const KeyRef& k) const;
  template <class Fn>
  void for_each_record(uint32_t i, Fn&& fn) const;
  uint64_t off_of(const void* p) const { return uint64_t(static_cast<const uint8_t*>(p) - base_); }

  void lock_stripe(uint32_t i);
  void unlock_stripe(uint32_t i);
  void recover_stripe(uint32_t i);
  void lock_alloc();
  void unlock_alloc();
  void recover_alloc();
  bool is_journal_target(uint64_t target) const;

  Probe find_locked(const Stripe& s, const KeyRef& k) const;
  bool update_impl(const KeyRef& k, UpdateFn& fn, const Pin* built);
  void resize_locked(uint32_t si, uint64_t want_keys);
  void build_table(uint64_t off, uint64_t units, uint64_t old_ref, uint32_t lg);
  void write_record(uint64_t off, uint64_t units, uint64_t stamp, const KeyRef& k,
                    ValueSource& src, uint64_t vmax);
  // Throws InvalidArgument for a key longer than a record header can say
  // (kMaxKeyBytes), ValueTooLarge for a record that can never fit in the
  // heap or in one record (kMaxRecordUnits).  Inline: every put runs it,
  // under the stripe lock before anything changes (update_impl).
  void check_fits(const KeyRef& k, uint64_t vmax) const {
    if (k.len > kMaxKeyBytes) throw_key_too_long(k.len);
    const uint64_t room = std::min(heap_units_, kMaxRecordUnits) * kUnit;  // for one record
    if (vmax > room || k.len > room - vmax || kHeaderBytes + k.len + vmax > room)
      throw_never_fits(vmax);
  }
  [[noreturn]] void throw_never_fits(uint64_t vmax) const;
  [[noreturn]] static void throw_key_too_long(uint64_t key_bytes);
  void notify_change(Stripe& s);   // always bumps s_wait_word (recovery)
  void notify_waiters(Stripe& s);  // a writer, after unlocking: only if one waits
  bool reserve_key();
  uint64_t count_keys();  // exact_size()'s double collect
  void recount();

  // tag: low bits stored with the offset into *target (kPinBuilding).
  uint64_t alloc(uint64_t units, std::atomic<uint64_t>* target, bool from_top = false,
                 uint64_t tag = 0);
  void reserve_units(uint64_t first, uint64_t units);
  void free_block(std::atomic<uint64_t>* target, uint64_t units);
  // The stripe's spare block (Stripe::s_spare), stripe lock held.
  uint64_t take_spare(Stripe& s, uint64_t units);
  void retire_block(Stripe& s, std::atomic<uint64_t>* target, uint64_t units);
  bool reclaim_spares();

  // Pins (pins.cpp).
  PinSlot& pin_slot(uint32_t i) const {
    return *reinterpret_cast<PinSlot*>(pin_base_ + uint64_t(i) * pin_stride_);
  }
  PinEntry& pin_entry(uint32_t slot, uint32_t e) const {
    return reinterpret_cast<PinEntry*>(pin_base_ + uint64_t(slot) * pin_stride_ +
                                       sizeof(PinSlot))[e];
  }
  uint32_t pin_high(const PinSlot& s) const;  // p_high, bounded by pin_entries_
  void claim_pin_slot();
  uint32_t free_pin_entry() const;
  void release_pin_slot();
  void release_pin_entry(uint32_t slot, uint32_t e);
  void release_slot_entries(uint32_t slot);
  bool other_pins_of(uint64_t block, const PinEntry* except) const;
  bool hand_to_pins(std::atomic<uint64_t>* target);
  void drop_pins_of(uint64_t block);
  bool is_pin_target(uint64_t target) const;
  int pins_slot() const;  // this process's pin slot (pins_->m held)
  void free_or_hand_to_pins(std::atomic<uint64_t>* target, uint64_t units);
  uint64_t bitmap_word(uint64_t w) const;
  uint64_t find_run(uint64_t units, uint64_t hint_word) const;
  void lower_class_hints(uint64_t first, uint64_t n);
  uint64_t find_run_from_top(uint64_t units) const;
  void mark_units(uint64_t first, uint64_t n, bool used);
  uint64_t count_used_units() const;
  uint64_t largest_free_run() const;

  std::string name_;
  uint8_t* base_;
  uint64_t size_;
  int fd_;  // kept open to reserve heap pages (posix_fallocate) as they are reached
  SegmentHeader* hdr_;
  // Geometry and identity, copied once from the validated header: nothing
  // after attach re-reads them from shared memory, so a stray write to the
  // header cannot redirect this process's pointers.
  uint32_t nstripes_;
  Stripe* stripes_;
  uint64_t heap_off_, heap_units_, bitmap_words_;
  uint64_t* bitmap_;
  uint64_t hash_seed_, max_keys_;
  uint32_t creator_pid_, mode_;
  uint8_t* pin_base_;
  uint32_t pin_entries_;
  uint64_t pin_stride_;
  // This process's pin slot and the views on each entry (pins.cpp).
  std::unique_ptr<struct ProcessPins> pins_;
  uint64_t created_unix_ns_;
  // exact_size()'s last count and the h_keyset_epoch it holds for
  // (process-local; len_epoch_ is kNoEpoch while being replaced).
  static constexpr uint64_t kNoEpoch = ~uint64_t(0);
  std::atomic<uint64_t> len_epoch_{kNoEpoch};
  std::atomic<uint64_t> len_count_{0};
};

// Defined here so that every engine file inlines them (dict.cpp explains
// why everything a lock-free reader follows is bounds-checked).
inline Slot* Dict::table_slots(uint64_t ref) const {
  uint64_t off = table_offset(ref);
  uint32_t lg = table_log2(ref);
  if (lg < kMinTableLog2 || lg > 40 || off < heap_off_ || off % kUnit != 0) return nullptr;
  uint64_t bytes = (uint64_t(1) << lg) * sizeof(Slot);
  if (off > size_ || bytes > size_ - off) return nullptr;
  return reinterpret_cast<Slot*>(base_ + off);
}

inline const RecordHeader* Dict::record(uint64_t off, uint64_t* klen, uint64_t* vlen) const {
  if (off < heap_off_ || off > size_ || size_ - off < kHeaderBytes) return nullptr;
  auto* r = reinterpret_cast<const RecordHeader*>(base_ + off);
  uint64_t kl = r->r_klen_flags.load(std::memory_order_relaxed) & kRecordKeyLenMask;
  uint64_t vl = racy_load(r->r_vlen);
  uint64_t room = size_ - off - kHeaderBytes;
  if (kl > room || vl > room - kl) return nullptr;
  *klen = kl;
  *vlen = vl;
  return r;
}

inline void Dict::prefetch_for_put(const KeyRef& k) const {
  const Stripe& s = stripes_[stripe_of(k.hash)];
  const uint64_t ref = s.s_table_ref.load(std::memory_order_relaxed);
  const Slot* slots = table_slots(ref);  // checks that all 2^log2 slots are in the segment
  if (slots) __builtin_prefetch(&slots[k.hash & ((uint64_t(1) << table_log2(ref)) - 1)], 1);
  const uint64_t spare = s.s_spare.load(std::memory_order_relaxed);
  if (spare >= heap_off_ && spare <= size_ && size_ - spare >= 2 * kUnit) {
    __builtin_prefetch(base_ + spare, 1);
    __builtin_prefetch(base_ + spare + kUnit, 1);
  }
}

// The SegmentFull message for a /dev/shm that has no memory left (errno e).
std::string shm_full_message(const std::string& name, int e);

}  // namespace sbx
