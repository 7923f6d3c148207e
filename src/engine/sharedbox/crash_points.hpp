// crash_points.hpp — the named points where a test build of the engine can be
// killed, so that recovery from every one of them is checked by enumeration
// rather than by the luck of random kills (tests/engine/test_crash_points.cpp).
//
// A crash point marks a step between two shared-memory effects that recovery
// must undo or finish: a journal write, a bitmap change, a publishing store, a
// count or reservation update, a spare hand-over, a resize phase, or a step of
// recovery itself.  A SIGKILL can land anywhere, but the state it leaves can
// only differ at these steps: between two neighbouring points the shared
// effects either are all ordered by release stores (so a kill sees a prefix of
// them) or are plain counters that recovery rebuilds from the journal, never
// reads.  docs/design.md has the table: point -> state left -> repair.
//
// SBX_CRASH_POINT(name) only compiles if `name` is in SBX_CRASH_POINT_LIST,
// so the list is complete by construction; tests/test_crash_points.py also
// checks that every listed name is used and is reached by some operation.
//
// In a release build (SHAREDBOX_CRASH_POINTS undefined) a point expands to
// nothing but a compile-time name check: no code, no string, no symbol.  The
// test build (cmake -DSHAREDBOX_CRASH_POINTS=ON) calls the hook the test
// installs at every point it passes.
#pragma once

#include <cstdint>

// One line per point, in the order an operation meets them.
#define SBX_CRASH_POINT_LIST(X)                                                  \
  /* Dict::put */                                                                \
  X(put_key_reserved)          /* h_reserved_keys taken, journal still closed */ \
  X(put_journal_open)          /* j_op = PUT, nothing else changed yet */        \
  X(put_record_written)        /* record complete (even stamp), not published */ \
  X(put_change_begun)          /* s_change_seq odd, slot not yet stored */       \
  X(put_publish_begun)         /* s_publish_seq odd, slot not yet stored */      \
  X(put_published)             /* slot names the new record, counts old */       \
  X(put_publish_ended)         /* s_publish_seq even again */                    \
  X(put_counted)               /* s_count/s_tombs updated, change seq odd */     \
  X(put_change_ended)          /* change seq even, old record not retired */     \
  X(put_old_retired)           /* old block freed or made the spare */           \
  X(put_done)                  /* journal closed, stripe lock still held */      \
  X(put_unlocked)              /* stripe unlocked, waiters not yet looked at */  \
  X(put_rollback_freed)        /* failed put: new block given back */            \
  X(put_rollback_unreserved)   /* failed put: reservation returned */            \
  /* Dict::take_spare / Dict::retire_block */                                    \
  X(spare_named_by_journal)    /* spare block named by s_spare and j_new */      \
  X(spare_taken)               /* s_spare = 0, block owned by j_new */           \
  X(retire_old_spare_freed)    /* previous spare freed, j_old not yet retired */ \
  X(retire_named_by_spare)     /* old block named by j_old and s_spare */        \
  X(retire_spare_kept)         /* j_old = 0, the block is the stripe's spare */  \
  /* Dict::reclaim_spares */                                                     \
  X(reclaim_stripe_locked)     /* stripe locked, its spare about to be freed */  \
  X(reclaim_spare_freed)       /* spare back in the allocator */                 \
  /* Dict::erase */                                                              \
  X(erase_journal_open)                                                          \
  X(erase_change_begun)                                                          \
  X(erase_publish_begun)       /* s_publish_seq odd, slot not yet stored */      \
  X(erase_published)           /* slot is a tombstone, counts old */             \
  X(erase_publish_ended)       /* s_publish_seq even again */                    \
  X(erase_counted)                                                               \
  X(erase_change_ended)                                                          \
  X(erase_old_retired)                                                           \
  X(erase_unreserved)          /* h_reserved_keys released, journal open */      \
  X(erase_done)                                                                  \
  X(erase_unlocked)            /* stripe unlocked, waiters not yet looked at */  \
  /* Dict::resize_locked */                                                      \
  X(resize_journal_open)                                                         \
  X(resize_table_allocated)    /* new table block owned by j_new */              \
  X(resize_table_built)        /* new table filled, not published */             \
  X(resize_gen_odd)            /* s_table_gen odd: readers wait */               \
  X(resize_published)          /* s_table_ref names the new table */             \
  X(resize_gen_even)                                                             \
  X(resize_old_freed)          /* old table freed, journal open */               \
  /* Dict::alloc / Dict::free_block */                                           \
  X(alloc_pages_reserved)      /* pages fallocated, marks moved, no journal */   \
  X(alloc_journal_open)        /* a_op = ALLOC */                                \
  X(alloc_bits_marked)         /* bitmap says used, target not yet set */        \
  X(alloc_target_set)          /* the receiving journal field names the block */ \
  X(alloc_counted)             /* a_used_units updated, a_op still ALLOC */      \
  X(free_journal_open)         /* a_op = FREE */                                 \
  X(free_bits_cleared)         /* bitmap says free, target still names it */     \
  X(free_target_cleared)                                                         \
  X(free_counted)                                                                \
  /* Dict::recount, Dict::exact_size */                                          \
  X(recount_all_locked)                                                          \
  X(recount_stored)            /* h_reserved_keys set, recount flag still set */ \
  X(len_all_locked)            /* len() fell back to every stripe lock */        \
  /* Dict::named_lock */                                                         \
  X(lock_name_written)         /* a free slot holds the name, l_state still 0 */ \
  /* Dict::recover_stripe (a crash inside recovery) */                           \
  X(recover_stripe_begin)      /* recount requested, nothing repaired */         \
  X(recover_stripe_alloc_settled) /* allocator journal replayed */               \
  X(recover_stripe_seq_even)   /* table gen / change seq made even */            \
  X(recover_stripe_publish_even) /* publish seq made even */                     \
  X(recover_stripe_spare_cleared) /* doubly named spare dropped */               \
  X(recover_stripe_replayed)   /* block freed or kept, counts restored */        \
  X(recover_stripe_unreserved) /* reservation of a rolled-back insert returned */\
  X(recover_stripe_done)       /* journal closed, mutex not yet consistent */    \
  /* Dict::recover_alloc */                                                      \
  X(recover_alloc_begin)                                                         \
  X(recover_alloc_replayed)    /* bits and target redone */                      \
  X(recover_alloc_counted)     /* counters rebuilt, a_op still set */           \
  /* pins.cpp: pin, unpin, deferred free, build and publish, reclaim */          \
  X(pin_slot_claimed)          /* our keeper holds the slot, p_pid set */        \
  X(pin_record_flagged)        /* r_flags says pinned, no entry names it yet */  \
  X(pin_entry_set)             /* the entry names the record */                  \
  X(unpin_entry_cleared)       /* a reference let go */                          \
  X(unpin_block_freed)         /* last retired or building entry freed it */     \
  X(retire_pins_marked)        /* entries retired, j_old still names the block */\
  X(retire_handed_to_pins)     /* j_old = 0: the retired entries own the block */\
  X(build_block_allocated)     /* the entry owns the block (building) */         \
  X(build_record_written)      /* header and value head written, odd stamp */    \
  X(publish_journal_named)     /* j_new and the building entry both name it */   \
  X(publish_pin_converted)     /* the entry is a reference, j_new owns it */     \
  X(publish_stamped)           /* even stamp, not yet published */              \
  X(recover_build_pin_dropped) /* a dead builder's entry gave way to j_new */    \
  X(reclaim_slot_locked)       /* a dead owner's slot mutex taken */             \
  X(reclaim_entry_released)    /* one of its entries released */                \
  X(reclaim_slot_cleared)      /* p_pid = 0, mutex not yet consistent */

namespace sbx {

enum class CrashPoint : uint32_t {
#define SBX_CRASH_POINT_ENUM(name) name,
  SBX_CRASH_POINT_LIST(SBX_CRASH_POINT_ENUM)
#undef SBX_CRASH_POINT_ENUM
      kCount
};

#if defined(SHAREDBOX_CRASH_POINTS)
// Called at every crash point the process passes; the test's hook counts them
// and SIGKILLs its own process at the one it was told to.  nullptr = none.
using CrashHook = void (*)(CrashPoint);
void set_crash_hook(CrashHook hook);
CrashHook crash_hook();
const char* crash_point_name(CrashPoint p);

inline void crash_point(CrashPoint p) {
  if (CrashHook h = crash_hook()) h(p);
}
#define SBX_CRASH_POINT(name) ::sbx::crash_point(::sbx::CrashPoint::name)
#else
#define SBX_CRASH_POINT(name) static_cast<void>(::sbx::CrashPoint::name)
#endif

}  // namespace sbx
