// test_crash_points.cpp — kills a process at every crash point of every
// operation, and checks what the next process recovers.
//
// Needs the engine built with -DSHAREDBOX_CRASH_POINTS=ON (crash_points.hpp).
// For each operation (a Scenario) the parent builds the same starting state
// in a fresh segment, then:
//   1. a child runs the operation with a hook that records every crash point
//      it passes (the "trace"): the operation's hits, in order;
//   2. for each hit k, a child runs the operation again and SIGKILLs itself at
//      hit k; the parent (another process) then recovers and checks;
//   3. for each hit k, a second child runs a recovery (check_integrity(), or
//      len()), traced; for each hit r of that recovery, the operation dies at
//      k, the recovery dies at r, and the parent (a third process) recovers
//      and checks.
// The checks after every kill: the first lock the parent takes is a plain
// put into every stripe (the path a real writer would take); then
// check_integrity() passes, every acknowledged value is intact, the key in
// flight holds its old or its new value whole (or is absent if it was), and a
// following put and get work.
//
// Everything is deterministic: the hash seed of each segment is fixed, so the
// same keys land in the same stripes and slots, and a replay meets the same
// crash points in the same order (a replay that finishes without reaching its
// kill point is a failure).
//
//   sharedbox_crash_tests                    every scenario
//   sharedbox_crash_tests put_new erase      the named scenarios only
//   sharedbox_crash_tests --only=SCENARIO:POINT
//                                            only the kills at POINT (its
//                                            every hit) in SCENARIO, and the
//                                            recoveries from them
//   sharedbox_crash_tests --list             scenario names, then point names
//
// The last line is "crash points: N pairs ... 0 failed" on success; the exit
// status is non-zero on any failure or if a listed point was never reached.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "sharedbox/crash_points.hpp"
#include "sharedbox/dict.hpp"
#include "sharedbox/errors.hpp"
#include "sharedbox/layout.hpp"
#include "test_values.hpp"

#if !defined(SHAREDBOX_CRASH_POINTS)
#error "test_crash_points.cpp needs the engine built with SHAREDBOX_CRASH_POINTS"
#endif

namespace {

using sbx::CrashPoint;
using sbx_test::erase;
using sbx_test::get;
using sbx_test::put;

constexpr uint64_t kFixedSeed = 0x5eed'5eed'1234'5678ULL;
constexpr size_t kMaxHits = 4096;

int g_failures = 0;
std::string g_context;  // the scenario and kill points being checked

void fail(const std::string& what) {
  ++g_failures;
  if (g_failures <= 50) std::fprintf(stderr, "FAIL [%s]: %s\n", g_context.c_str(), what.c_str());
}

// ---------------------------------------------------------------------------
// The hook.  The trace lives in anonymous shared memory so that the parent
// reads what a child recorded; the kill index is per process (set after fork).

struct Trace {
  uint32_t n;
  uint32_t ids[kMaxHits];
};
Trace* g_trace = nullptr;
long g_kill_at = -1;
long g_seen = 0;

void hook(CrashPoint p) {
  long i = g_seen++;
  if (i < long(kMaxHits)) {
    g_trace->ids[i] = uint32_t(p);
    g_trace->n = uint32_t(i + 1);
  }
  if (i == g_kill_at) ::raise(SIGKILL);
}

// Runs fn in a child with the hook armed to kill at hit kill_at (-1: never).
// Returns true if the child died of SIGKILL, false if it finished; the hits
// it passed are in g_trace.
bool run_child(const std::function<void()>& fn, long kill_at) {
  g_trace->n = 0;
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("fork");
    std::exit(2);
  }
  if (pid == 0) {
    g_kill_at = kill_at;
    g_seen = 0;
    sbx::set_crash_hook(hook);
    int status = 0;
    try {
      fn();
    } catch (const sbx::Error& e) {
      // Expected by the scenarios that fill the segment; anything else the
      // parent sees as a trace that ended early.
      if (e.code() != sbx::Errc::SegmentFull && e.code() != sbx::Errc::TooManyKeys) status = 3;
    } catch (...) {
      status = 4;
    }
    ::_exit(status);
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0) {
  }
  if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) return true;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail("child ended with status " + std::to_string(st) + " instead of finishing or dying");
  return false;
}

std::vector<uint32_t> trace_ids() { return std::vector<uint32_t>(g_trace->ids, g_trace->ids + g_trace->n); }

// ---------------------------------------------------------------------------
// Raw access to a segment's shared structures, to fix the hash seed and to
// read (or, for a scenario's setup, poke) what the engine keeps private.

struct RawSegment {
  uint8_t* base = nullptr;
  uint64_t size = 0;
  explicit RawSegment(const std::string& name) {
    int fd = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
    struct stat st;
    if (fd < 0 || ::fstat(fd, &st) != 0) {
      std::perror("shm_open");
      std::exit(2);
    }
    size = uint64_t(st.st_size);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) {
      std::perror("mmap");
      std::exit(2);
    }
    base = static_cast<uint8_t*>(p);
  }
  ~RawSegment() { ::munmap(base, size); }
  sbx::SegmentHeader* header() const { return reinterpret_cast<sbx::SegmentHeader*>(base); }
  sbx::Stripe& stripe(uint32_t i) const {
    return reinterpret_cast<sbx::Stripe*>(base + header()->h_stripe_off)[i];
  }
};

uint32_t stripe_of(sbx::Dict& d, const std::string& key) {
  return uint32_t(d.key(key.data(), key.size()).hash >> 40) & (d.stripe_count() - 1);
}

// Whether one more key fits stripe i's table without a resize (Dict::put's rule).
bool has_table_room(const RawSegment& raw, uint32_t i) {
  const sbx::Stripe& s = raw.stripe(i);
  uint64_t ref = s.s_table_ref.load();
  if (!ref) return false;
  uint64_t cap = uint64_t(1) << sbx::table_log2(ref);
  return (s.s_count.load() + s.s_tombs.load() + 1) * 4 <= cap * 3;
}

// ---------------------------------------------------------------------------
// Scenarios.

// A value that says whose it is, so a torn or misplaced value cannot pass.
std::string make_value(const std::string& key, int version, size_t len) {
  std::string v = key + "#" + std::to_string(version) + ":";
  while (v.size() < len) v += char('a' + (v.size() * 7 + size_t(version)) % 26);
  v.resize(len);
  return v;
}

// Record sizes that make a value of `units` 64-byte units for a 5-byte key.
size_t value_len_for_units(uint64_t units) { return size_t(units * 64 - sbx::kHeaderBytes - 5); }

struct State {
  std::unique_ptr<sbx::Dict> d;
  std::map<std::string, std::string> acked;  // every write that returned
  std::string key;                           // the key in flight
  bool has_old = false, has_new = false;
  std::string old_value, new_value;
  bool full = false;                         // the segment was filled on purpose
  bool claims_lock = false;                  // the operation claims the lock "jobs"
  uint64_t publish_seq_before = 0;           // of the key in flight's stripe, before the op
};

struct Scenario {
  const char* name;
  uint64_t size, max_keys;
  uint32_t stripes;
  std::function<void(State&)> setup;  // parent, before any fork
  std::function<void(State&)> op;     // child: the operation
};

void ack(State& st, const std::string& k, const std::string& v) {
  put(*st.d, k, v);
  st.acked[k] = v;
}

void plain_keys(State& st, int n) {
  for (int i = 0; i < n; ++i) {
    std::string k = "p" + std::to_string(1000 + i);
    ack(st, k, make_value(k, 0, 50 + size_t(i) * 13));
  }
}

// Fills the heap: values of 16, then 2, then 1 unit until no put succeeds;
// keys are "f" + 4 digits.  Afterwards no free unit is left.
void fill(State& st) {
  int next = 0;
  for (uint64_t units : {16, 2, 1}) {
    int misses = 0;
    while (misses < 64) {
      std::string k = "f" + std::to_string(1000 + next++);
      std::string v = make_value(k, 0, value_len_for_units(units));
      try {
        ack(st, k, v);
        misses = 0;
      } catch (const sbx::Error& e) {
        if (e.code() != sbx::Errc::SegmentFull) throw;
        ++misses;
      }
    }
  }
  if (st.d->stats().largest_free_bytes != 0) {
    std::fprintf(stderr, "setup: could not fill the segment\n");
    std::exit(2);
  }
  st.full = true;
}

// A fresh key in stripe `want` (any stripe if want < 0) whose table has room.
std::string fresh_key(State& st, const RawSegment& raw, int want, const char* prefix) {
  for (int i = 0; i < 100000; ++i) {
    std::string k = prefix + std::to_string(1000 + i);
    if (st.acked.count(k)) continue;
    uint32_t si = stripe_of(*st.d, k);
    if ((want < 0 || int(si) == want) && has_table_room(raw, si)) return k;
  }
  std::fprintf(stderr, "setup: no fresh key with table room\n");
  std::exit(2);
}

void set_new(State& st, const std::string& k, const std::string& v) {
  st.key = k;
  auto it = st.acked.find(k);
  st.has_old = it != st.acked.end();
  if (st.has_old) {
    st.old_value = it->second;
    st.acked.erase(it);  // checked as the key in flight instead
  }
  st.has_new = true;
  st.new_value = v;
}

void set_erase(State& st, const std::string& k) {
  set_new(st, k, "");
  st.has_new = false;
}

class IncrementDecimal : public sbx::UpdateFn {
 public:
  sbx::ValueSource* decide(const uint8_t* v, uint64_t len, bool present) override {
    long n = present ? std::stol(std::string(reinterpret_cast<const char*>(v), len)) : 0;
    out_ = std::to_string(n + 1);
    src_ = std::make_unique<sbx_test::StringSource>(out_);
    return src_.get();
  }

 private:
  std::string out_;
  std::unique_ptr<sbx_test::StringSource> src_;
};

class ReplaceIfEqual : public sbx::UpdateFn {
 public:
  ReplaceIfEqual(const std::string& expected, const std::string& replacement)
      : expected_(expected), src_(replacement) {}
  sbx::ValueSource* decide(const uint8_t* v, uint64_t len, bool present) override {
    if (!present || std::string(reinterpret_cast<const char*>(v), len) != expected_) return nullptr;
    return &src_;
  }

 private:
  std::string expected_;
  sbx_test::StringSource src_;
};

// Pins (zero-copy views): every value may be pinned.
class AcceptAll : public sbx::PinCheck {
 public:
  void check(const uint8_t*, uint64_t, uint64_t) override {}
};

sbx::Pin pin_key(sbx::Dict& d, const std::string& k) {
  AcceptAll all;
  sbx::Pin p;
  if (!d.pin(d.key(k.data(), k.size()), all, &p)) {
    std::fprintf(stderr, "pin: key %s is absent\n", k.c_str());
    std::_Exit(5);
  }
  return p;
}

// The start of a value that begin_build() writes; the caller writes the rest.
class PrefixSource : public sbx::ValueSource {
 public:
  PrefixSource(std::string prefix, uint64_t rest) : prefix_(std::move(prefix)), rest_(rest) {}
  uint64_t max_bytes() const override { return prefix_.size() + rest_; }
  uint64_t write(uint8_t* dst, uint64_t) override {
    std::memcpy(dst, prefix_.data(), prefix_.size());
    return prefix_.size();
  }

 private:
  std::string prefix_;
  uint64_t rest_;
};

// Builds `value` for k in place: the first 8 bytes through begin_build's
// head, the rest written by hand, as create_array's caller fills its array.
sbx::Pin build(sbx::Dict& d, const std::string& k, const std::string& value) {
  PrefixSource head(value.substr(0, 8), value.size() - 8);
  sbx::Pin p;
  d.begin_build(d.key(k.data(), k.size()), head, value.size() - 8, &p);
  std::memcpy(p.value + p.data_at, value.data() + 8, value.size() - 8);
  return p;
}

// In a child that then dies (SIGKILL): pins one record, pins another and
// overwrites it (a retired pin), and builds a block it never publishes; so
// the segment holds a dead process's pins of every kind.
void die_holding_pins(State& st) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    pin_key(*st.d, "k0001");
    pin_key(*st.d, "k0002");
    put(*st.d, "k0002", make_value("k0002", 1, 300));
    build(*st.d, "k0003", make_value("k0003", 1, 700));
    ::raise(SIGKILL);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  if (!WIFSIGNALED(status)) {
    std::fprintf(stderr, "setup: the pinning child did not die as planned\n");
    std::exit(2);
  }
  st.acked["k0002"] = make_value("k0002", 1, 300);
}

std::vector<Scenario> scenarios() {
  std::vector<Scenario> v;
  const uint64_t small = 256 << 10;
  v.push_back({"put_new", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 set_new(st, "k0001", make_value("k0001", 1, 100));
               },
               [](State& st) { put(*st.d, st.key, st.new_value); }});
  v.push_back({"put_overwrite", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 100));
                 set_new(st, "k0001", make_value("k0001", 1, 300));
               },
               [](State& st) { put(*st.d, st.key, st.new_value); }});
  v.push_back({"put_if_absent", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 set_new(st, "k0001", make_value("k0001", 1, 100));
               },
               [](State& st) { put(*st.d, st.key, st.new_value, sbx::PutMode::IfAbsent); }});
  v.push_back({"erase", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 100));
                 set_erase(st, "k0001");
               },
               [](State& st) { erase(*st.d, st.key); }});
  // 12 keys fill 3/4 of the first 16-slot table: the 13th grows it.
  v.push_back({"put_grows_table", small, 64, 1, [](State& st) {
                 plain_keys(st, 12);
                 set_new(st, "k0001", make_value("k0001", 1, 100));
               },
               [](State& st) { put(*st.d, st.key, st.new_value); }});
  // An overwrite leaves a 4-unit spare; a new 4-unit record takes it.
  v.push_back({"put_takes_spare", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "a0001", make_value("a0001", 0, value_len_for_units(4)));
                 ack(st, "a0001", make_value("a0001", 1, 600));
                 set_new(st, "k0001", make_value("k0001", 1, value_len_for_units(4)));
               },
               [](State& st) { put(*st.d, st.key, st.new_value); }});
  // The stripe already has a spare (a0001's first block) that the new record
  // is too large for: the overwritten block of k0001 becomes the spare, and
  // the older spare goes back to the allocator.
  v.push_back({"put_hands_back", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 600));
                 ack(st, "a0001", make_value("a0001", 0, 200));
                 ack(st, "a0001", make_value("a0001", 1, 900));
                 set_new(st, "k0001", make_value("k0001", 1, 2000));
               },
               [](State& st) { put(*st.d, st.key, st.new_value); }});
  v.push_back({"alloc_large", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 set_new(st, "k0001", make_value("k0001", 1, 5000));
               },
               [](State& st) { put(*st.d, st.key, st.new_value); }});
  v.push_back({"free_large", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 5000));
                 set_erase(st, "k0001");
               },
               [](State& st) { erase(*st.d, st.key); }});
  // The reservation ran ahead of the keys (as after a crash): the put is
  // refused for keys, recounts under every lock, and retries.
  v.push_back({"put_recounts", small, 18, 1, [](State& st) {
                 plain_keys(st, 15);
                 RawSegment raw(st.d->name());
                 raw.header()->h_reserved_keys.store(18);
                 raw.header()->h_recount_needed.store(1);
                 set_new(st, "k0001", make_value("k0001", 1, 100));
               },
               [](State& st) { put(*st.d, st.key, st.new_value); }});
  // A full segment whose free space is in two other stripes' spares: the
  // put fails, hands every spare back (reclaim_spares) and retries.
  v.push_back({"put_reclaims_spares", 128 << 10, 4096, 4, [](State& st) {
                 fill(st);
                 RawSegment raw(st.d->name());
                 std::string k = fresh_key(st, raw, -1, "k");
                 uint32_t target = stripe_of(*st.d, k);
                 std::set<uint32_t> donors;
                 for (auto it = st.acked.begin(); it != st.acked.end() && donors.size() < 2;) {
                   uint32_t si = stripe_of(*st.d, it->first);
                   if (si != target && !donors.count(si) &&
                       it->second.size() == value_len_for_units(2)) {
                     donors.insert(si);
                     erase(*st.d, it->first);
                     it = st.acked.erase(it);
                   } else {
                     ++it;
                   }
                 }
                 set_new(st, k, make_value(k, 1, value_len_for_units(2)));
               },
               [](State& st) { put(*st.d, st.key, st.new_value); }});
  // A full segment with no spare: the put takes a reservation and a journal,
  // finds no block, rolls back and reports SegmentFull.
  v.push_back({"put_fails_full", 128 << 10, 4096, 4, [](State& st) {
                 fill(st);
                 RawSegment raw(st.d->name());
                 std::string k = fresh_key(st, raw, -1, "k");
                 set_new(st, k, make_value(k, 1, value_len_for_units(2)));
               },
               [](State& st) { put(*st.d, st.key, st.new_value); }});
  // Read-modify-write (what SharedDict.incr and compare_and_set run): the
  // new value is computed from the old one under the stripe lock.
  v.push_back({"update_increment", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", "41");
                 set_new(st, "k0001", "42");
               },
               [](State& st) {
                 IncrementDecimal inc;
                 st.d->update(st.d->key(st.key.data(), st.key.size()), inc);
               }});
  v.push_back({"update_if_equal", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 100));
                 set_new(st, "k0001", make_value("k0001", 1, 700));
               },
               [](State& st) {
                 ReplaceIfEqual cas(st.old_value, st.new_value);
                 st.d->update(st.d->key(st.key.data(), st.key.size()), cas);
               }});
  // A record that crosses into heap pages nobody reserved yet (segments
  // reserve their pages in 1 MiB chunks as the allocator reaches them).
  v.push_back({"alloc_reserves_pages", 4 << 20, 64, 1, [](State& st) {
                 for (int i = 0; i < 9; ++i) {
                   std::string k = "b" + std::to_string(1000 + i);
                   ack(st, k, make_value(k, 0, 100000));
                 }
                 set_new(st, "k0001", make_value("k0001", 1, 300000));
               },
               [](State& st) { put(*st.d, st.key, st.new_value); }});
  // Claiming a named lock slot: a claimer that dies leaves the slot free, and
  // the name can be claimed (and locked) again.
  v.push_back({"claim_named_lock", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 st.claims_lock = true;
               },
               [](State& st) { st.d->named_lock("jobs"); }});
  // Pins.  A view of a record that is then overwritten: the pin takes the
  // old block over, and the unpin frees it (the deferred free).
  v.push_back({"pin_overwrite_unpin", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 400));
                 set_new(st, "k0001", make_value("k0001", 1, 200));
               },
               [](State& st) {
                 sbx::Pin p = pin_key(*st.d, st.key);
                 put(*st.d, st.key, st.new_value);
                 // The view still reads the old value, whole.
                 if (std::string(reinterpret_cast<const char*>(p.value), p.value_len) != st.old_value)
                   std::_Exit(6);
                 st.d->unpin(p);
               }});
  // A view of a record that is deleted, and the viewer dies holding it.
  v.push_back({"pin_erase", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 400));
                 set_erase(st, "k0001");
               },
               [](State& st) {
                 pin_key(*st.d, st.key);
                 erase(*st.d, st.key);
               }});
  // A view taken and released while the record lives.
  v.push_back({"pin_unpin", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 400));
                 set_new(st, "k0001", make_value("k0001", 0, 400));
               },
               [](State& st) { st.d->unpin(pin_key(*st.d, st.key)); }});
  // create_array: build in place, publish over an old value, let go.
  v.push_back({"build_publish", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 400));
                 set_new(st, "k0001", make_value("k0001", 1, 900));
               },
               [](State& st) {
                 sbx::Pin p = build(*st.d, st.key, st.new_value);
                 st.d->publish_built(st.d->key(st.key.data(), st.key.size()), p);
                 st.d->unpin(p);
               }});
  // create_array left by an exception: the block is freed, nothing published.
  v.push_back({"build_abandon", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 400));
                 set_new(st, "k0001", make_value("k0001", 0, 400));
               },
               [](State& st) { st.d->unpin(build(*st.d, st.key, make_value("k0001", 1, 900))); }});
  // A process died holding pins of every kind: the next one frees them.
  v.push_back({"reclaim_dead_pins", small, 64, 1, [](State& st) {
                 plain_keys(st, 5);
                 ack(st, "k0001", make_value("k0001", 0, 400));
                 ack(st, "k0002", make_value("k0002", 0, 500));
                 die_holding_pins(st);
                 set_new(st, "k0001", make_value("k0001", 0, 400));
               },
               [](State& st) { st.d->reclaim_dead_pins(); }});
  return v;
}

// ---------------------------------------------------------------------------
// One run: a fresh segment in the scenario's starting state.

std::string segment_name(int n) {
  return "sbx_enginetest_" + std::to_string(getpid()) + "_crash_" + std::to_string(n);
}

std::unique_ptr<State> start(const Scenario& sc) {
  static int counter = 0;
  auto st = std::make_unique<State>();
  sbx::OpenOptions o;
  o.name = segment_name(counter++);
  o.size = sc.size;
  o.max_keys = sc.max_keys;
  o.stripes = sc.stripes;
  try {
    sbx::Dict::unlink(o.name);
  } catch (const sbx::Error&) {
  }
  st->d = sbx::Dict::open(o);
  {
    RawSegment raw(o.name);
    raw.header()->h_hash_seed = kFixedSeed;
  }
  o.create = false;
  st->d = sbx::Dict::open(o);  // re-attach: the seed is read at open
  sc.setup(*st);
  st->publish_seq_before = st->d->publish_seq(st->d->key(st->key.data(), st->key.size()));
  return st;
}

void finish(State& st) {
  std::string name = st.d->name();
  st.d.reset();
  try {
    sbx::Dict::unlink(name);
  } catch (const sbx::Error&) {
  }
}

// The parent's recovery and checks after the kills.
void check_after(State& st) {
  sbx::Dict& d = *st.d;
  try {
    {
      // Before any recovery: once a lock-free read shows the key in flight
      // changed, its stripe's publish sequence must be odd or have moved, or
      // a value cache holding the old value would go on serving it.
      std::string got;
      const bool present = get(d, st.key, &got);
      const bool same = present ? st.has_old && got == st.old_value : !st.has_old;
      const uint64_t seq = d.publish_seq(d.key(st.key.data(), st.key.size()));
      if (!same && seq == st.publish_seq_before)
        fail("the key in flight changed, but its stripe's publish sequence did not move");
    }
    // A writer in every stripe first: the recovery a real process would do.
    // Stripes that hold a spare go first, with a record the spare fits, so
    // that a stale spare (one a pending allocator replay still frees) would
    // be handed out before anything else takes the allocator lock.
    std::vector<std::pair<uint32_t, uint64_t>> order;  // (stripe, record units)
    {
      RawSegment raw(d.name());
      for (uint32_t i = 0; i < d.stripe_count(); ++i)
        if (raw.stripe(i).s_spare.load()) order.push_back({i, raw.stripe(i).s_spare_units.load()});
      for (uint32_t i = 0; i < d.stripe_count(); ++i)
        if (!raw.stripe(i).s_spare.load()) order.push_back({i, 2});
    }
    for (const auto& [i, units] : order) {
      for (int n = 0; n < 1000; ++n) {
        std::string k = "z" + std::to_string(i) + "_" + std::to_string(n);
        if (stripe_of(d, k) != i) continue;
        std::string v = make_value(k, 2, value_len_for_units(units));
        try {
          put(d, k, v);
          st.acked[k] = v;
        } catch (const sbx::Error& e) {
          if (!(st.full && e.code() == sbx::Errc::SegmentFull)) throw;
        }
        break;
      }
    }
    for (const std::string& p : d.check_integrity()) fail("check_integrity(): " + p);
    // Every process that pinned is dead now: their pins are freed, and the
    // blocks they kept go back to the allocator (check_integrity again).
    d.reclaim_dead_pins();
    if (uint64_t n = d.pin_stats().pins) fail(std::to_string(n) + " pins left after reclaiming");
    for (const std::string& p : d.check_integrity()) fail("after reclaiming pins: " + p);

    for (const auto& [k, v] : st.acked) {
      std::string got;
      if (!get(d, k, &got))
        fail("acknowledged key " + k + " is missing");
      else if (got != v)
        fail("acknowledged key " + k + " holds a different value");
    }
    if (st.claims_lock) {
      // The name resolves to one slot, which locks; every other slot is free.
      uint32_t slot = d.named_lock("jobs");
      if (d.named_lock("jobs") != slot) fail("the lock name resolves to two slots");
      if (d.lock_named(slot, 1.0) != sbx::LockResult::Acquired) fail("the claimed lock is stuck");
      d.unlock_named(slot);
      for (uint32_t i = 1; i < sbx::kNamedLocks; ++i) d.named_lock("other" + std::to_string(i));
    }
    std::string got;
    bool present = get(d, st.key, &got);
    bool ok = (present && st.has_old && got == st.old_value) ||
              (present && st.has_new && got == st.new_value) || (!present && !st.has_old) ||
              (!present && !st.has_new);
    if (!ok)
      fail("key in flight " + st.key + (present ? " holds neither its old nor its new value"
                                                : " is missing but was never deleted"));
    std::set<std::string> want;
    for (const auto& kv : st.acked) want.insert(kv.first);
    if (present) want.insert(st.key);
    auto keys = d.keys(true);
    if (std::set<std::string>(keys.begin(), keys.end()) != want || keys.size() != want.size())
      fail("keys(atomic) differs from the keys that should be present");
    if (d.exact_size() != want.size()) fail("len() differs from the keys present");

    // The dict goes on working: make room if it was filled, then write.
    if (st.full) {
      for (auto it = st.acked.begin(); it != st.acked.end();) {
        if (it->first[0] == 'f' && it->second.size() == value_len_for_units(16)) {
          erase(d, it->first);
          it = st.acked.erase(it);
          break;
        }
        ++it;
      }
    }
    std::string v = make_value("after", 3, 200);
    put(d, "after", v);
    if (!get(d, "after", &got) || got != v) fail("a put after recovery did not read back");
    std::string v2 = make_value(st.key, 4, 120);
    put(d, st.key, v2);
    if (!get(d, st.key, &got) || got != v2) fail("the key in flight cannot be rewritten");
    for (const std::string& p : d.check_integrity()) fail("after more writes: " + p);
  } catch (const std::exception& e) {
    fail(std::string("recovery raised: ") + e.what());
  }
}

struct Totals {
  long first_kills = 0, recovery_kills = 0;
  std::set<uint32_t> reached;
};

const std::vector<std::pair<const char*, std::function<void(sbx::Dict&)>>>& recoverers() {
  static const std::vector<std::pair<const char*, std::function<void(sbx::Dict&)>>> r = {
      {"check_integrity", [](sbx::Dict& d) { (void)d.check_integrity(); }},
      {"len", [](sbx::Dict& d) { (void)d.exact_size(); }},
      {"reclaim_dead_pins", [](sbx::Dict& d) { (void)d.reclaim_dead_pins(); }},
  };
  return r;
}

void run_scenario(const Scenario& sc, const std::string& only_point, Totals& t) {
  g_context = std::string(sc.name) + " (trace)";
  std::vector<uint32_t> hits;
  {
    auto st = start(sc);
    if (run_child([&] { sc.op(*st); }, -1)) fail("the traced run died");
    hits = trace_ids();
    finish(*st);
  }
  if (hits.empty()) fail("the operation passed no crash point");
  for (size_t k = 0; k < hits.size(); ++k) {
    const char* point = sbx::crash_point_name(CrashPoint(hits[k]));
    if (!only_point.empty() && only_point != point) continue;
    t.reached.insert(hits[k]);
    std::string at = std::string(sc.name) + " killed at " + point + " (hit " +
                     std::to_string(k) + ")";
    // The operation dies at hit k; the parent recovers.
    {
      g_context = at;
      auto st = start(sc);
      if (!run_child([&] { sc.op(*st); }, long(k))) fail("the replay finished without dying");
      ++t.first_kills;
      check_after(*st);
      finish(*st);
    }
    // The operation dies at hit k, then a recovery dies at each of its hits.
    for (const auto& [rname, recover] : recoverers()) {
      std::vector<uint32_t> rhits;
      {
        g_context = at + ", then " + rname + " (trace)";
        auto st = start(sc);
        run_child([&] { sc.op(*st); }, long(k));
        if (run_child([&] { recover(*st->d); }, -1)) fail("the traced recovery died");
        rhits = trace_ids();
        finish(*st);
      }
      for (size_t r = 0; r < rhits.size(); ++r) {
        t.reached.insert(rhits[r]);
        g_context = at + ", then " + rname + " killed at " +
                    sbx::crash_point_name(CrashPoint(rhits[r])) + " (hit " + std::to_string(r) +
                    ")";
        auto st = start(sc);
        run_child([&] { sc.op(*st); }, long(k));
        if (!run_child([&] { recover(*st->d); }, long(r)))
          fail("the recovery replay finished without dying");
        ++t.recovery_kills;
        check_after(*st);
        finish(*st);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::set<std::string> chosen;
  std::string only_scenario, only_point;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--list") {
      list = true;
    } else if (a.rfind("--only=", 0) == 0) {
      std::string spec = a.substr(7);
      size_t colon = spec.find(':');
      only_scenario = spec.substr(0, colon);
      only_point = colon == std::string::npos ? "" : spec.substr(colon + 1);
      chosen.insert(only_scenario);
    } else {
      chosen.insert(a);
    }
  }
  auto all = scenarios();
  if (list) {
    for (const auto& sc : all) std::printf("scenario %s\n", sc.name);
    for (uint32_t p = 0; p < uint32_t(CrashPoint::kCount); ++p)
      std::printf("point %s\n", sbx::crash_point_name(CrashPoint(p)));
    return 0;
  }
  void* mem = ::mmap(nullptr, sizeof(Trace), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
  if (mem == MAP_FAILED) return 2;
  g_trace = static_cast<Trace*>(mem);

  Totals t;
  int ran = 0;
  for (const auto& sc : all) {
    if (!chosen.empty() && !chosen.count(sc.name)) continue;
    long before = t.first_kills + t.recovery_kills;
    run_scenario(sc, only_point, t);
    ++ran;
    std::printf("%-22s %5ld pairs\n", sc.name, t.first_kills + t.recovery_kills - before);
  }
  if (ran == 0) {
    std::fprintf(stderr, "no such scenario\n");
    return 2;
  }
  int unreached = 0;
  if (chosen.empty()) {
    for (uint32_t p = 0; p < uint32_t(CrashPoint::kCount); ++p) {
      if (t.reached.count(p)) continue;
      ++unreached;
      std::printf("point never reached: %s\n", sbx::crash_point_name(CrashPoint(p)));
    }
  }
  std::printf("crash points: %ld pairs covered (%ld kills in %d operations, %ld kills inside "
              "recovery), %zu of %u points reached, %d failed\n",
              t.first_kills + t.recovery_kills, t.first_kills, ran, t.recovery_kills,
              t.reached.size(), unsigned(CrashPoint::kCount), g_failures);
  return g_failures || unreached ? 1 : 0;
}
