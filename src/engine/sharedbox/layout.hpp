// layout.hpp — every structure that lives in a sharedbox segment.
//
// A segment is one named POSIX shared-memory object, mapped by each process at
// its own address; everything inside refers to everything else by byte offset
// from the start of the segment, never by pointer.
//
//   offset 0              SegmentHeader            (one page)
//   h_stripe_off          Stripe[h_stripes]        (256 bytes each)
//   h_pin_off             PinSlot[kPinSlots]       (each followed by its PinEntry array)
//   h_bitmap_off          allocation bitmap        (1 bit per 64-byte unit of heap)
//   h_heap_off            heap: records and stripe tables, in 64-byte units
//
// Locking table (who may write what).  "stripe lock" is Stripe::s_mutex of the
// stripe that owns the key (hash bits pick the stripe); "alloc lock" is
// AllocState::a_mutex.  Lock order: stripes in ascending index, then alloc.
//
//   field                         written by                    read by
//   ---------------------------   ---------------------------   ---------------------------
//   SegmentHeader identity        creator, before h_ready       everyone, after h_ready
//   h_reserved_keys               any writer, atomic RMW        writers (max_keys check)
//   h_recount_needed              recovery; recount (all locks) writers on TooManyKeys
//   h_keyset_epoch                inserting/deleting writers    len() (seq_cst)
//   AllocState, bitmap            alloc-lock holder             alloc-lock holder
//   a_reserved_low/_high          alloc-lock holder             alloc-lock holder
//   a_class_hint                  alloc-lock holder             alloc-lock holder
//   a_holder_tid, s_holder_tid    that lock's holder            waiters (stuck-lock check)
//   Stripe::s_count, s_tombs      stripe-lock holder            len() (relaxed), holder
//   Stripe::s_table_gen/_ref      stripe-lock holder (resize)   lock-free readers
//   Stripe::s_journal             stripe-lock holder            recovery (stripe lock)
//   Stripe::s_spare, _units       stripe-lock holder            recovery, check_integrity
//   Stripe::s_change_seq          stripe-lock holder            len() (double collect)
//   Stripe::s_wait_word           waiters; writers if bit 31    writers, waiters (futex)
//   Stripe::s_publish_seq         stripe-lock holder; recovery  lock-free readers (caches)
//   h_locks[i].l_mutex            its Python-level holder       acquirers
//   h_locks[i].l_state, l_name    claimer, under alloc lock     lock lookups (acquire)
//   table slots                   stripe-lock holder            lock-free readers
//   PinSlot::p_mutex              its owner's keeper thread     sweepers (trylock: alive?)
//   PinSlot::p_pid, p_high        owner; reclaimer of a dead    stats, scanners (acquire)
//                                 owner (holding p_mutex)
//   PinEntry::e_ref, e_units      owner, under the stripe lock  stripe-lock holders (scan),
//                                 of the pinned record (or the  check_integrity, stats
//                                 alloc lock: building blocks);
//                                 overwriters mark them retired
//                                 (CAS); a reference is let go
//                                 by a CAS without the lock
//   Record                        allocating writer, before     lock-free readers, who
//                                 publication; then immutable   validate every read
//                                 until freed
//
// Why lock-free reads are safe: a record is never modified after it is
// published; an overwrite writes a new record and publishes it with one atomic
// store to the slot, and only then frees the old one.  A reader therefore copies
// the record it found and afterwards re-checks (a) the slot still holds the same
// control word, (b) the record still carries the stamp it had, and (c) the
// stripe's table generation is unchanged.  Freed memory stays mapped, so a
// stale read is at worst garbage, which the re-check rejects (seqlock style);
// every offset and length is bounds-checked before it is followed.
//
// Why a crash is safe: each mutation is described in the owning lock's journal
// before it starts, and publishes with a single atomic store.  The next process
// to take a robust mutex whose owner died (EOWNERDEAD) replays the journal:
// roll forward if the store happened, roll back otherwise.  Every step between
// two shared effects is a named crash point (crash_points.hpp), and a test
// kills a process at each one; docs/design.md has the point-by-point table.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace sbx {

// "SHRDBOX" + layout generation, little-endian.  A segment whose first eight
// bytes differ is foreign and is never read further.
constexpr uint64_t kMagic = 0x0158'4F42'4452'4853ULL;
// 2: heap reservation marks (AllocState::a_reserved_*); segments are
//    published whole under their name (segment.cpp).
// 3: Stripe::s_publish_seq, which every put and erase must move (a reader's
//    cache trusts it: a writer of version 2 would leave it still).
// 4: a 32-byte RecordHeader (r_units 32 bits, key length and flags in one
//    word), so that a record of up to 32 key and value bytes fills one line.
constexpr uint32_t kLayoutVersion = 4;
// h_ready holds this value once the creator has finished initialising.
constexpr uint32_t kReadyMark = 0x5245'4459u;  // "READY"

constexpr uint64_t kUnit = 64;        // allocation granule and record alignment
constexpr uint64_t kPage = 4096;
constexpr uint64_t kCacheLine = 64;

constexpr uint32_t kMaxStripes = 4096;
constexpr uint64_t kMaxKeysLimit = uint64_t(1) << 31;
constexpr uint64_t kMaxSegmentBytes = uint64_t(1) << 44;  // 16 TiB
constexpr uint32_t kMinTableLog2 = 4;                    // 16 slots
constexpr uint64_t kSpareMaxUnits = 16;  // a stripe keeps freed blocks up to 1 KiB
// Allocation size classes: 1..16 units exactly, then 8 per doubling up to
// kLargestClassUnits (256 KiB); larger blocks are not rounded.
constexpr uint32_t kExactClasses = 16;
constexpr uint64_t kLargestClassUnits = 4096;
constexpr uint32_t kSizeClasses = 80;

static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "shared-memory atomics must be address-free");
static_assert(std::atomic<uint32_t>::is_always_lock_free,
              "shared-memory atomics must be address-free");

// ---------------------------------------------------------------------------
// AllocState: the heap allocator.  Free space is a bitmap, one bit per unit,
// because a bitmap is a pure function of the live blocks: after any crash it
// can be checked or rebuilt from the index alone.
//
// Protected by a_mutex (robust).  Every allocation or free is journaled in
// a_op/a_off/a_units/a_target before the bitmap changes; a_target is the
// offset of the 8-byte field (inside a stripe journal) that receives the
// block on ALLOC or gives it up on FREE, so the hand-over between allocator
// and stripe happens inside the allocator's critical section and is replayed
// with it.  Both replays are idempotent (set or clear the same bits).
struct AllocState {
  pthread_mutex_t a_mutex;
  std::atomic<uint32_t> a_op;       // AllocOp
  // Thread id of the a_mutex holder as its lock word shows it, 0 when free.
  // Written by the holder right after locking and before unlocking; read
  // (racily, sampled over seconds) by waiters to tell a real holder from a
  // corrupted lock word (robust_mutex.cpp).  A stale value only delays that
  // verdict or, if it stays wrong for the whole window, raises an error.
  std::atomic<uint32_t> a_holder_tid;
  std::atomic<uint64_t> a_off;      // byte offset of the block being handed over
  std::atomic<uint64_t> a_units;    // its size in units
  std::atomic<uint64_t> a_target;   // byte offset of the journal field involved
  std::atomic<uint64_t> a_used_units;  // units allocated; readers: stats (relaxed)
  // Search hints, one per size class (size_class() in allocator.cpp): no
  // free run of at least that class's size starts below bitmap word
  // a_class_hint[c].  Allocations round their size up to a class, so a search
  // starts at its class's hint and moves it to where it found a run; a free
  // lowers the hints of every class its merged run can hold.  So the search
  // never rescans the small holes that other sizes leave (mixed value sizes
  // made first fit from one global hint 65x slower).  Only a lower bound:
  // recovery resets them all to 0, and a hint past the bitmap is ignored.
  uint32_t a_class_hint[kSizeClasses];
  // Heap units [0, a_reserved_low) and [a_reserved_high, h_heap_units) have
  // their pages reserved in /dev/shm (posix_fallocate), so touching them can
  // never raise SIGBUS on a full tmpfs.  Records grow from the bottom and
  // tables from the top, so two marks cover nearly every allocation; a block
  // outside both is reserved on its own.  Marks only move after a reservation
  // succeeded and reservations are never given back, so a stale or replayed
  // value is safe: at worst a range is reserved again (idempotent).
  std::atomic<uint64_t> a_reserved_low;
  std::atomic<uint64_t> a_reserved_high;
};

enum AllocOp : uint32_t { kAllocNone = 0, kAllocAlloc = 1, kAllocFree = 2 };

// ---------------------------------------------------------------------------
// NamedLock: one of a fixed number of cross-process locks that Python code
// holds while it runs (SharedDict.lock(name)), unlike stripe locks, which no
// Python ever runs under.  Robust, process-shared, error-checking: a holder's
// death hands the lock to the next acquirer with EOWNERDEAD (the caller
// reports it as `recovered`); a thread that unlocks a lock it does not hold
// gets EPERM.  Nothing but the lock itself is protected, so there is nothing
// to repair.
//
// A slot is claimed once, under the allocator lock: l_name is written first,
// then l_state = 1 (release); lookups read l_state (acquire) before l_name,
// so a name is never seen half written.  A claimer that dies before storing
// l_state leaves the slot free (the next claimer overwrites the name).
// Slots are never given back.
constexpr uint32_t kNamedLocks = 32;
constexpr uint32_t kLockNameMax = 43;  // UTF-8 bytes; l_name keeps a NUL after them

struct NamedLock {
  pthread_mutex_t l_mutex;
  std::atomic<uint32_t> l_holder_tid;  // as Stripe::s_holder_tid
  std::atomic<uint32_t> l_state;       // 0 free, 1 named
  // Set when a dead holder's lock was taken and let go without being
  // acquired (locked() probes it): the next acquirer reports `recovered`.
  std::atomic<uint32_t> l_recovered;
  char l_name[kLockNameMax + 1];
};
static_assert(sizeof(NamedLock) <= 96, "named lock slots stay small");

// ---------------------------------------------------------------------------
// Pins (zero-copy views, SharedDict.view / create_array).  A view reads a
// record's value in place, so the record's block must not be freed or reused
// while the view lives, even if the key is overwritten or deleted meanwhile.
// Each process that pins anything owns one PinSlot; each record it pins, or
// block it is building, is one PinEntry of that slot.
//
// A slot belongs to the process whose keeper thread (pins.cpp) holds p_mutex:
// a robust mutex locked for the process's whole life and never unlocked while
// it holds pins, so that any other process can tell a dead owner from a live
// one by a trylock (EOWNERDEAD: dead; its pins are reclaimed, see
// Dict::reclaim_dead_pins).  A thread that ends does not drop the pins, because
// the keeper thread lives as long as the process.
//
// PinEntry::e_ref is the offset of the block, whose low bits (offsets are
// multiples of kUnit) carry the entry's state:
//   0                 free
//   off               pins a live record: the index owns the block
//   off | kPinRetired the record was overwritten or deleted while pinned; the
//                     entries naming it own the block together, and the last
//                     one to let go frees it
//   off | kPinBuilding a block being filled by create_array, owned by the entry
// Entries change under the stripe lock of the record they name (found from
// the record's r_hash, which cannot change while the record is pinned), with
// two exceptions: building blocks are handed out by the allocator (alloc
// lock) and freed through the entry as the allocator's target (a_target), so
// that the hand-over replays after a crash like any other; and a reference
// (state 0) is let go by one CAS to 0 without the lock, which an overwrite's
// CAS to retired either precedes (the entry then co-owns the block) or
// follows (the entry no longer names it).  So a stripe-lock holder that scans
// for entries naming one of its records sees every entry that can still
// start co-owning it: none can start naming it while it holds the lock, and
// stale reads of other entries cannot equal it.
constexpr uint32_t kPinSlots = 64;
constexpr uint32_t kPinMaxEntries = 1024;
constexpr uint32_t kPinMinEntries = 8;
constexpr uint64_t kPinRetired = 1;
constexpr uint64_t kPinBuilding = 2;
constexpr uint64_t kPinStateMask = kUnit - 1;

struct PinEntry {
  std::atomic<uint64_t> e_ref;    // block offset | state (see above)
  std::atomic<uint64_t> e_units;  // its size in units; written before e_ref
};

struct alignas(kCacheLine) PinSlot {
  pthread_mutex_t p_mutex;           // robust; held by the owner's keeper thread
  std::atomic<uint32_t> p_pid;       // owner, 0 = free; for stats and the CLI
  // Entries [0, p_high) may be in use: raised (release) by the owner before
  // it fills an entry beyond it, reset by the reclaimer of a dead owner after
  // every entry is free.  Scanners read it (acquire) and stop there.
  std::atomic<uint32_t> p_high;
  // followed by PinEntry[h_pin_entries]
};
// Bytes of one slot with its entries (a whole number of cache lines).
constexpr uint64_t pin_slot_bytes(uint32_t entries) {
  return sizeof(PinSlot) + uint64_t(entries) * sizeof(PinEntry);
}
static_assert(sizeof(PinSlot) == kCacheLine, "a pin slot header is one cache line");
static_assert(sizeof(PinEntry) == 16, "pin entries are two words");

// ---------------------------------------------------------------------------
// SegmentHeader: page 0.  The identity block is written once by the creator
// before it stores kReadyMark into h_ready (release); attachers wait for the
// mark (acquire) and then only read it, so no lock is needed.
struct SegmentHeader {
  uint64_t h_magic;
  uint32_t h_version;
  uint32_t h_header_bytes;          // sizeof(SegmentHeader) of the creator
  std::atomic<uint32_t> h_ready;    // kReadyMark once initialised
  uint32_t h_creator_pid;
  uint64_t h_created_unix_ns;
  uint64_t h_segment_bytes;         // == size of the shm object
  uint64_t h_max_keys;
  uint32_t h_stripes;               // power of two
  uint32_t h_mode;                  // permission bits given at creation
  uint64_t h_stripe_off;
  uint64_t h_bitmap_off;
  uint64_t h_heap_off;
  uint64_t h_heap_units;
  uint64_t h_hash_seed;             // per-segment: key hashes differ between segments
  uint64_t h_pin_off;               // PinSlot table (see PinSlot)
  uint32_t h_pin_entries;           // PinEntry per slot: a power of two, 8..1024
  uint32_t h_pad0;

  // Keys counted against max_keys.  Incremented (CAS, bounded by h_max_keys)
  // before a new key is published, decremented after a key is removed, so a
  // crash can only leave it too high; recovery then sets h_recount_needed and
  // the next writer refused for lack of keys recounts under all stripe locks.
  alignas(kCacheLine) std::atomic<uint64_t> h_reserved_keys;
  // Moves (seq_cst RMW) before every insert or delete publishes, on the line
  // that h_reserved_keys already makes those writers share.  A process that
  // counted the keys between two equal readings of it may answer len() from
  // that count while it stays unchanged (Dict::exact_size).  A writer that
  // dies after moving it costs only a recount.
  std::atomic<uint64_t> h_keyset_epoch;
  std::atomic<uint32_t> h_recount_needed;
  std::atomic<uint32_t> h_recoveries;  // number of dead-owner repairs, for stats

  alignas(kCacheLine) AllocState h_alloc;

  alignas(kCacheLine) NamedLock h_locks[kNamedLocks];
};

// ---------------------------------------------------------------------------
// Journal of the stripe's current mutation (protected by the stripe lock).
// j_op is stored last when an operation starts and reset last when it ends;
// the other fields are only meaningful while j_op != kOpNone.
struct Journal {
  std::atomic<uint32_t> j_op;       // StripeOp
  std::atomic<uint32_t> j_insert;   // PUT: the key was absent (a new slot)
  std::atomic<uint32_t> j_was_tomb; // PUT insert: the chosen slot held a tombstone
  std::atomic<uint32_t> j_reserved; // PUT insert: h_reserved_keys was taken
  std::atomic<uint64_t> j_slot;     // slot index in j_table
  std::atomic<uint64_t> j_table;    // s_table_ref when the operation began
  std::atomic<uint64_t> j_new;      // block allocated by this op (0 = none)
  std::atomic<uint64_t> j_new_units;
  std::atomic<uint64_t> j_old;      // block to free once published (0 = none)
  std::atomic<uint64_t> j_old_units;
  std::atomic<uint64_t> j_count;    // s_count before the op
  std::atomic<uint64_t> j_tombs;    // s_tombs before the op
};

enum StripeOp : uint32_t { kOpNone = 0, kOpPut = 1, kOpErase = 2, kOpResize = 3 };

// ---------------------------------------------------------------------------
// Stripe: one lock and one open-addressing hash table of the keys whose hash
// selects it.  Four cache lines, so that lock traffic between writers
// (line 0) never evicts the line lock-free readers poll (line 1).
struct alignas(kCacheLine) Stripe {
  // line 0 — writers only.
  pthread_mutex_t s_mutex;              // robust, process-shared
  std::atomic<uint64_t> s_count;        // live keys; len() sums these (relaxed)
  std::atomic<uint64_t> s_tombs;        // tombstones in the current table
  // Thread id of the s_mutex holder as its lock word shows it, 0 when free:
  // written by the holder right after locking and before unlocking, read by
  // waiters (racily) to tell a real holder from a corrupted lock word; see
  // AllocState::a_holder_tid and robust_mutex.cpp.
  std::atomic<uint32_t> s_holder_tid;
  uint32_t s_pad0;

  // line 1 — the reader line.  A seqlock: s_table_gen is odd while the table
  // is being replaced.  s_table_ref = table offset | log2(capacity); 0 = no
  // table yet.  Readers compare s_table_gen before and after a lookup.
  alignas(kCacheLine) std::atomic<uint64_t> s_table_gen;
  std::atomic<uint64_t> s_table_ref;

  // lines 2-3 — journal and record stamps, writers and recovery only.
  alignas(kCacheLine) Journal s_journal;
  std::atomic<uint64_t> s_next_stamp;   // stamps are (counter << 16) | stripe index
  // One small freed block (at most kSpareMaxUnits) the stripe keeps for its
  // next write instead of handing it back to the allocator, so a steady
  // stream of overwrites never takes the segment-wide allocator lock (two
  // writers on disjoint keys would otherwise serialise on it).  Stripe-lock
  // holder only; 0 = none.  The block stays marked used in the bitmap.
  // Hand-overs with the journal (spare -> j_new, j_old -> spare) store the
  // receiving field first, so a crash can leave the block named twice, never
  // lost; recovery then lets the journal's claim win (Dict::recover_stripe).
  std::atomic<uint64_t> s_spare;
  std::atomic<uint64_t> s_spare_units;
  // Waiters of SharedDict.wait() on keys of this stripe sleep on this word
  // (a futex): bit 31 says someone may be asleep, bits 0-30 count the
  // writes that found it set.  A waiter sets bit 31 (an RMW), then looks at
  // its key, and sleeps only while the word is unchanged; a writer, after
  // publishing and unlocking, reads the word and only if bit 31 is set bumps
  // the count (clearing the bit) and wakes the sleepers.  The waiter's RMW
  // and the writer's unlock are both full barriers, so either the waiter's
  // second look finds the write or the writer finds the bit: no change is
  // missed (Dict::notify_waiters).  A waiter that dies leaves at most bit 31
  // set, which costs the next writer one wake call.  Recovery bumps it
  // unconditionally.  Written by waiters and by writers that find bit 31
  // (atomic RMW only); read by writers after every write.
  std::atomic<uint32_t> s_wait_word;
  uint32_t s_pad1;
  // Odd while a put or erase is between publishing its slot and updating
  // s_count, so that s_count matches the keys present whenever it is even.
  // len() sums s_count over an interval in which no stripe's s_change_seq
  // moved or was odd (a double collect), which makes the sum the number of
  // keys present at one instant.  Stripe-lock holder writes; len() reads
  // (acquire); recovery makes it even.
  std::atomic<uint64_t> s_change_seq;
  // Odd while a put or erase of the stripe is storing its slot word: the
  // holder makes it odd just before that publishing store and even again
  // right after, so it moves by two on every publish and never moves back.
  // A process that reads the same even value before reading a key of the
  // stripe and again later knows that no put or erase of the stripe has
  // published in between: what it read is still the current value (a
  // handle's value cache answers from memory on that check alone,
  // Dict::publish_seq).  Resizing moves no value and leaves it alone.  A
  // holder that dies while it is odd leaves it odd (readers fall back to
  // reading the record) until recovery makes it even.  Stripe-lock holder
  // and recovery write it; lock-free readers load it (acquire).
  std::atomic<uint64_t> s_publish_seq;
};

static_assert(sizeof(Stripe) == 4 * kCacheLine, "Stripe must stay four cache lines");
static_assert(offsetof(Stripe, s_table_gen) == kCacheLine,
              "the writers' line (mutex, counts, holder) must fit in line 0");
static_assert(sizeof(SegmentHeader) <= kPage, "header must fit its page");

// ---------------------------------------------------------------------------
// A table slot is one 64-bit control word, so that publication, overwrite and
// deletion are each a single atomic store:
//   bits 0-1   state: 0 empty, 1 tombstone, 2 full
//   bits 2-23  22 bits of the key hash (filters probes without touching records)
//   bits 24-63 record offset / 64
// Written only by the stripe-lock holder; read lock-free.  Empty slots only
// appear in a freshly built table, so a key present for a whole lookup is
// always reached by probing from its home slot.
using Slot = std::atomic<uint64_t>;

enum SlotState : uint64_t { kSlotEmpty = 0, kSlotTomb = 1, kSlotFull = 2 };

constexpr uint64_t slot_state(uint64_t c) { return c & 3u; }
constexpr uint64_t slot_tag(uint64_t c) { return (c >> 2) & 0x3FFFFFu; }
constexpr uint64_t slot_record(uint64_t c) { return (c >> 24) * kUnit; }
constexpr uint64_t make_full_slot(uint64_t record_off, uint64_t tag) {
  return ((record_off / kUnit) << 24) | ((tag & 0x3FFFFFu) << 2) | kSlotFull;
}

// The 22 hash bits a slot keeps as its tag.
constexpr uint64_t tag_of(uint64_t hash) { return (hash >> 16) & 0x3FFFFFu; }
// Heap units of a table of 2^log2cap slots.
constexpr uint64_t table_units(uint32_t log2cap) {
  return ((uint64_t(1) << log2cap) * sizeof(Slot) + kUnit - 1) / kUnit;
}

constexpr uint64_t table_offset(uint64_t ref) { return ref & ~uint64_t(63); }
constexpr uint32_t table_log2(uint64_t ref) { return uint32_t(ref & 63); }
constexpr uint64_t make_table_ref(uint64_t off, uint32_t log2cap) { return off | log2cap; }

// ---------------------------------------------------------------------------
// Record: one key and its value, in one block of whole units.  Written by the
// writer that allocated it, before publication; immutable until freed, except
// the flags of r_klen_flags (below).
// r_stamp = (per-stripe counter << 17) | (stripe << 1) | building: unique for
// the life of the segment.  The writer stores it odd (building) before any
// other field and even (complete, release) after the last, then publishes the
// slot.  A reader loads the stamp before any other field, refuses an odd one,
// and re-checks slot word and stamp after its copy: if both are unchanged the
// block was complete and was not freed and reused in between.
struct RecordHeader {
  std::atomic<uint64_t> r_stamp;
  uint64_t r_hash;
  uint64_t r_vlen;    // value bytes that follow the key
  uint32_t r_units;   // block size in units (what free() releases)
  // Key bytes (UTF-8, after the header) in bits 0-23, flags in bits 24-31.
  // One word, so that the header is 32 bytes and a record of up to 32 key
  // and value bytes fills a single cache line (a 40-byte header made a
  // typical short str record two lines: ~15% slower sets).  Flags:
  // kRecordPinned once any process has pinned the record (stripe-lock
  // holder, an atomic OR; sticky, never cleared while the record lives): an
  // overwrite or erase scans the pin table only for records that carry it.
  // Lock-free readers load the word and use only the key length.
  std::atomic<uint32_t> r_klen_flags;
};
constexpr uint64_t kStampBuilding = 1;
constexpr uint32_t kRecordKeyLenMask = (uint32_t(1) << 24) - 1;
constexpr uint32_t kRecordPinned = uint32_t(1) << 24;
// The limits the header's field widths set (Dict::check_fits enforces them).
constexpr uint64_t kMaxKeyBytes = kRecordKeyLenMask;            // 16 MiB - 1
constexpr uint64_t kMaxRecordUnits = (uint64_t(1) << 32) - 1;   // ~256 GiB
static_assert(sizeof(RecordHeader) == 32, "record header layout is part of the format");
constexpr uint64_t kHeaderBytes = sizeof(RecordHeader);  // the key follows it

}  // namespace sbx
