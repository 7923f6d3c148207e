// test_engine.cpp — standalone tests of the C++ engine (sbx::Dict), no Python.
//
// Built by CMake when SHAREDBOX_BUILD_TESTS=ON (target sharedbox_engine_tests)
// and driven by tests/test_engine_cpp.py.  No test framework: each test case is
// a function, CHECK records a failure (file:line) and lets the case go on, so
// one run reports every broken expectation rather than the first.
//
//   sharedbox_engine_tests                 run every case
//   sharedbox_engine_tests threads         run only the named case(s)
//   sharedbox_engine_tests --list          print the case names
//   sharedbox_engine_tests --iterations=N  per-thread loop count of the
//                                          threads case (default 5000)
//
// The last line printed is always "N passed, M failed" (N and M count cases);
// the exit status is non-zero if any case failed.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sharedbox/dict.hpp"
#include "sharedbox/errors.hpp"
#include "sharedbox/hash.hpp"
#include "test_values.hpp"

namespace {

// ---------------------------------------------------------------------------
// Failure recording.  The multi-threaded case calls CHECK from several
// threads, so the counter is atomic and printing is serialised.

std::atomic<int> g_case_failures{0};
std::mutex g_print_mutex;

void record_failure(const char* file, int line, const std::string& what) {
  g_case_failures.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(g_print_mutex);
  std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, what.c_str());
}

const char* errc_name(sbx::Errc c) {
  switch (c) {
    case sbx::Errc::InvalidArgument: return "InvalidArgument";
    case sbx::Errc::NotFound: return "NotFound";
    case sbx::Errc::PermissionDenied: return "PermissionDenied";
    case sbx::Errc::NoSpaceOnDevice: return "NoSpaceOnDevice";
    case sbx::Errc::Incompatible: return "Incompatible";
    case sbx::Errc::NotReady: return "NotReady";
    case sbx::Errc::SegmentFull: return "SegmentFull";
    case sbx::Errc::ValueTooLarge: return "ValueTooLarge";
    case sbx::Errc::TooManyKeys: return "TooManyKeys";
    case sbx::Errc::Corrupt: return "Corrupt";
    case sbx::Errc::System: return "System";
    case sbx::Errc::TooManyViews: return "TooManyViews";
    case sbx::Errc::TooManyLocks: return "TooManyLocks";
    case sbx::Errc::LockMisuse: return "LockMisuse";
  }
  return "?";
}

#define CHECK(cond)                                         \
  do {                                                      \
    if (!(cond)) record_failure(__FILE__, __LINE__, #cond); \
  } while (0)

// CHECK_EQ prints both sides: a count that is off by one says more than "false".
#define CHECK_EQ(a, b)                                                              \
  do {                                                                              \
    auto va_ = (a);                                                                 \
    auto vb_ = (b);                                                                 \
    if (!(va_ == vb_))                                                              \
      record_failure(__FILE__, __LINE__,                                            \
                     std::string(#a " == " #b " (") + std::to_string(va_) + " vs " + \
                         std::to_string(vb_) + ")");                                \
  } while (0)

// Expects `expr` to throw sbx::Error with code `errc`.
#define CHECK_THROWS(errc, expr)                                                      \
  do {                                                                                \
    bool thrown_ = false;                                                             \
    try {                                                                             \
      (void)(expr);                                                                   \
    } catch (const sbx::Error& e_) {                                                  \
      thrown_ = true;                                                                 \
      if (e_.code() != (errc))                                                        \
        record_failure(__FILE__, __LINE__,                                            \
                       std::string(#expr " threw ") + errc_name(e_.code()) +          \
                           ", expected " + errc_name(errc) + ": " + e_.what());       \
    } catch (const std::exception& e_) {                                              \
      thrown_ = true;                                                                 \
      record_failure(__FILE__, __LINE__,                                              \
                     std::string(#expr " threw a non-sbx exception: ") + e_.what());  \
    }                                                                                 \
    if (!thrown_)                                                                     \
      record_failure(__FILE__, __LINE__,                                              \
                     std::string(#expr " did not throw ") + errc_name(errc));         \
  } while (0)

// Integrity must hold after every scenario; print the violations if not.
#define CHECK_INTEGRITY(dict)                                                     \
  do {                                                                            \
    std::vector<std::string> problems_ = (dict).check_integrity();                \
    for (const std::string& p_ : problems_)                                       \
      record_failure(__FILE__, __LINE__, "check_integrity(): " + p_);             \
  } while (0)

// ---------------------------------------------------------------------------
// Values in and out (tests/engine/test_values.hpp).

using sbx_test::contains;
using sbx_test::erase;
using sbx_test::get;
using sbx_test::put;
using sbx_test::StringSink;
using sbx_test::StringSource;

// The value stored under `key`, or "<missing>" (for CHECK messages).
std::string value_of(sbx::Dict& d, const std::string& key) {
  std::string v;
  return get(d, key, &v) ? v : std::string("<missing>");
}

// ---------------------------------------------------------------------------
// Segments.  Names carry the pid (parallel runs never collide) and a counter
// (each case gets fresh segments); the guard unlinks on every exit path, so a
// failed CHECK or an unexpected exception leaves nothing in /dev/shm.

std::string unique_name(const char* tag) {
  static std::atomic<int> counter{0};
  return "sbx_enginetest_" + std::to_string(getpid()) + "_" + tag + "_" +
         std::to_string(counter.fetch_add(1));
}

class SegmentGuard {
 public:
  explicit SegmentGuard(const char* tag) : name_(unique_name(tag)) {}
  ~SegmentGuard() {
    try {
      sbx::Dict::unlink(name_);
    } catch (const sbx::Error&) {
      // Already unlinked by the test itself, or never created.
    }
  }
  SegmentGuard(const SegmentGuard&) = delete;
  SegmentGuard& operator=(const SegmentGuard&) = delete;
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

sbx::OpenOptions options(const std::string& name, uint64_t size, uint64_t max_keys,
                         uint32_t stripes = 0) {
  sbx::OpenOptions o;
  o.name = name;
  o.create = true;
  o.size = size;
  o.max_keys = max_keys;
  o.stripes = stripes;
  return o;
}

std::set<std::string> as_set(const std::vector<std::string>& v) {
  return std::set<std::string>(v.begin(), v.end());
}

// ---------------------------------------------------------------------------
// Test cases.

void test_lifecycle() {
  SegmentGuard seg("life");
  bool created = false;
  std::unique_ptr<sbx::Dict> d1 = sbx::Dict::open(options(seg.name(), 1 << 20, 16), &created);
  CHECK(created);
  CHECK(d1->name() == seg.name());
  CHECK_EQ(d1->max_keys(), uint64_t(16));
  CHECK_EQ(d1->segment_bytes(), uint64_t(1 << 20));
  CHECK_EQ(d1->creator_pid(), uint32_t(getpid()));
  CHECK(put(*d1, "a", "1"));

  // Attach only: sees the creator's data, and the creator sees its writes.
  sbx::OpenOptions attach;
  attach.name = seg.name();
  attach.create = false;
  created = true;
  std::unique_ptr<sbx::Dict> d2 = sbx::Dict::open(attach, &created);
  CHECK(!created);
  CHECK_EQ(d2->max_keys(), uint64_t(16));  // geometry comes from the segment
  CHECK(value_of(*d2, "a") == "1");
  CHECK(put(*d2, "b", "2"));
  CHECK(value_of(*d1, "b") == "2");
  CHECK_EQ(d1->size(), uint64_t(2));

  // create=true on an existing name attaches, whatever sizes it asks for.
  created = true;
  std::unique_ptr<sbx::Dict> d3 = sbx::Dict::open(options(seg.name(), 4 << 20, 999), &created);
  CHECK(!created);
  CHECK_EQ(d3->max_keys(), uint64_t(16));
  CHECK_EQ(d3->segment_bytes(), uint64_t(1 << 20));
  d3.reset();

  // Unlink removes the name only: open mappings keep working.
  sbx::Dict::unlink(seg.name());
  CHECK_THROWS(sbx::Errc::NotFound, sbx::Dict::open(attach));
  CHECK_THROWS(sbx::Errc::NotFound, sbx::Dict::unlink(seg.name()));
  CHECK(value_of(*d1, "a") == "1");
  CHECK(put(*d2, "c", "3"));
  CHECK(value_of(*d1, "c") == "3");
  CHECK_INTEGRITY(*d1);

  // Attaching to a name that never existed.
  sbx::OpenOptions missing;
  missing.name = unique_name("missing");
  missing.create = false;
  CHECK_THROWS(sbx::Errc::NotFound, sbx::Dict::open(missing));

  // Invalid names are refused before anything is created or looked up.
  for (const char* bad : {"", "a/b"}) {
    sbx::OpenOptions o = options(bad, 1 << 20, 16);
    CHECK_THROWS(sbx::Errc::InvalidArgument, sbx::Dict::open(o));
    o.create = false;
    CHECK_THROWS(sbx::Errc::InvalidArgument, sbx::Dict::open(o));
    CHECK_THROWS(sbx::Errc::InvalidArgument, sbx::Dict::unlink(bad));
    CHECK_THROWS(sbx::Errc::InvalidArgument, sbx::Dict::validate_name(bad));
  }
}

void test_basic_ops() {
  SegmentGuard seg("basic");
  auto d = sbx::Dict::open(options(seg.name(), 1 << 20, 64));
  CHECK_EQ(d->size(), uint64_t(0));
  CHECK(!contains(*d, "k"));
  std::string v = "untouched";
  CHECK(!get(*d, "k", &v));
  CHECK(v == "untouched");

  CHECK(put(*d, "k", "hello"));
  CHECK(contains(*d, "k"));
  CHECK(value_of(*d, "k") == "hello");
  CHECK_EQ(d->size(), uint64_t(1));

  // Overwrite, longer then shorter then empty: the size never changes.
  CHECK(put(*d, "k", std::string(5000, 'x')));
  CHECK(value_of(*d, "k") == std::string(5000, 'x'));
  CHECK(put(*d, "k", "short"));
  CHECK(value_of(*d, "k") == "short");
  CHECK(put(*d, "k", ""));
  CHECK(contains(*d, "k"));
  CHECK(get(*d, "k", &v) && v.empty());
  CHECK_EQ(d->size(), uint64_t(1));

  // IfAbsent stores only a new key and never replaces.
  CHECK(!put(*d, "k", "replaced?", sbx::PutMode::IfAbsent));
  CHECK(get(*d, "k", &v) && v.empty());
  CHECK(put(*d, "k2", "first", sbx::PutMode::IfAbsent));
  CHECK(!put(*d, "k2", "second", sbx::PutMode::IfAbsent));
  CHECK(value_of(*d, "k2") == "first");
  CHECK_EQ(d->size(), uint64_t(2));

  // Keys and values are bytes: embedded NULs and every byte value survive.
  std::string bin_key("a\0b", 3), bin_value;
  for (int i = 0; i < 256; ++i) bin_value.push_back(char(i));
  CHECK(put(*d, bin_key, bin_value));
  CHECK(value_of(*d, bin_key) == bin_value);
  CHECK(!contains(*d, "a"));  // not a C-string prefix match
  CHECK(put(*d, "", "empty key"));
  CHECK(value_of(*d, "") == "empty key");
  CHECK_EQ(d->size(), uint64_t(4));

  // Erase: true once, then false; the old value is handed over on request.
  std::string old;
  CHECK(erase(*d, "k2", &old));
  CHECK(old == "first");
  CHECK(!erase(*d, "k2"));
  CHECK(!contains(*d, "k2"));
  CHECK(!erase(*d, "never-there"));
  CHECK(erase(*d, bin_key));
  CHECK(erase(*d, ""));
  CHECK_EQ(d->size(), uint64_t(1));

  // A key can come back after being erased (its slot is a tombstone now).
  CHECK(put(*d, "k2", "again", sbx::PutMode::IfAbsent));
  CHECK(value_of(*d, "k2") == "again");
  CHECK_EQ(d->size(), uint64_t(2));
  CHECK_INTEGRITY(*d);
}

void test_max_keys() {
  // One stripe and the default (many stripes): the limit is global either way.
  for (uint32_t stripes : {1u, 0u}) {
    SegmentGuard seg("maxkeys");
    const uint64_t max_keys = 100;
    auto d = sbx::Dict::open(options(seg.name(), 4 << 20, max_keys, stripes));
    for (uint64_t i = 0; i < max_keys; ++i) CHECK(put(*d, "key" + std::to_string(i), "v"));
    CHECK_EQ(d->size(), max_keys);
    CHECK_THROWS(sbx::Errc::TooManyKeys, put(*d, "one-too-many", "v"));
    CHECK_THROWS(sbx::Errc::TooManyKeys, put(*d, "one-too-many", "v", sbx::PutMode::IfAbsent));
    CHECK(!contains(*d, "one-too-many"));
    CHECK_EQ(d->size(), max_keys);
    CHECK_INTEGRITY(*d);

    // Existing keys stay writable at the limit.
    CHECK(put(*d, "key7", "overwritten"));
    CHECK(value_of(*d, "key7") == "overwritten");
    CHECK(!put(*d, "key8", "x", sbx::PutMode::IfAbsent));  // present: false, not an error

    // Erasing makes room for exactly one key.
    CHECK(erase(*d, "key0"));
    CHECK(put(*d, "newcomer", "v"));
    CHECK_THROWS(sbx::Errc::TooManyKeys, put(*d, "second-newcomer", "v"));
    CHECK_EQ(d->size(), max_keys);
    CHECK_INTEGRITY(*d);
  }
}

void test_segment_full() {
  SegmentGuard seg("full");
  const uint64_t size = 256 << 10;
  auto d = sbx::Dict::open(options(seg.name(), size, 64, 4));
  const uint64_t heap = d->stats().heap_bytes;
  CHECK_EQ(heap, sbx::heap_bytes_for(size, 4));
  CHECK(heap > 100000 && heap < size);

  // Fill with 20 KB values until the heap refuses one.
  const std::string big(20000, 'b');
  int stored = 0;
  bool full = false;
  for (int i = 0; i < 100 && !full; ++i) {
    try {
      put(*d, "big" + std::to_string(i), big);
      ++stored;
    } catch (const sbx::Error& e) {
      CHECK(e.code() == sbx::Errc::SegmentFull);
      full = true;
    }
  }
  CHECK(full);
  // Each record is its 20000 bytes plus a header, rounded to 64-byte units;
  // all of them but the last partial one must have fitted.
  const uint64_t record = (20000 + sbx::kHeaderBytes + 8 + 63) / 64 * 64;
  CHECK_EQ(uint64_t(stored), heap / record);
  CHECK_EQ(d->size(), uint64_t(stored));
  CHECK_INTEGRITY(*d);

  // A failed overwrite keeps the old value.
  CHECK_THROWS(sbx::Errc::SegmentFull, put(*d, "big0", std::string(60000, 'c')));
  CHECK(value_of(*d, "big0") == big);
  // Small values still fit in what is left.
  CHECK(put(*d, "small", "s"));

  // Bigger than the heap itself: can never fit, whatever is erased.
  CHECK_THROWS(sbx::Errc::ValueTooLarge, put(*d, "huge", std::string(heap + 1, 'h')));
  CHECK_THROWS(sbx::Errc::ValueTooLarge, put(*d, "huge", std::string(heap, 'h')));
  CHECK(!contains(*d, "huge"));
  CHECK_INTEGRITY(*d);

  // Once everything is erased, one value of most of the heap fits again.
  for (int i = 0; i < stored; ++i) CHECK(erase(*d, "big" + std::to_string(i)));
  CHECK(erase(*d, "small"));
  CHECK_EQ(d->size(), uint64_t(0));
  CHECK_INTEGRITY(*d);
  const std::string large(heap * 3 / 4, 'L');
  CHECK(put(*d, "large", large));
  CHECK(value_of(*d, "large") == large);
  // ... and a second one of that size does not.
  CHECK_THROWS(sbx::Errc::SegmentFull, put(*d, "large2", large));
  CHECK(erase(*d, "large"));
  CHECK(put(*d, "large2", large));
  CHECK(value_of(*d, "large2") == large);
  CHECK_INTEGRITY(*d);
}

void test_keys() {
  SegmentGuard seg("keys");
  auto d = sbx::Dict::open(options(seg.name(), 4 << 20, 1000));
  CHECK(d->keys(true).empty());
  CHECK(d->keys(false).empty());

  std::set<std::string> model;
  for (int i = 0; i < 600; ++i) {
    std::string k = "key-" + std::to_string(i * 7919 % 10007);
    CHECK(put(*d, k, std::to_string(i)));
    model.insert(k);
  }
  // Erase every third key so the tables hold tombstones too.
  int n = 0;
  for (auto it = model.begin(); it != model.end();) {
    if (n++ % 3 == 0) {
      CHECK(erase(*d, *it));
      it = model.erase(it);
    } else {
      ++it;
    }
  }
  for (bool atomic : {true, false}) {
    std::vector<std::string> keys = d->keys(atomic);
    CHECK_EQ(keys.size(), model.size());  // no duplicates ...
    CHECK(as_set(keys) == model);         // ... and exactly the live keys
  }
  CHECK_INTEGRITY(*d);
}

// Random put/erase/get against std::map.  The seed is fixed so a failure
// reproduces; value sizes span one unit to many, so records of every size
// are freed and reused (the allocator's coalescing and first fit).
void test_churn() {
  SegmentGuard seg("churn");
  const int kKeys = 300;
  auto d = sbx::Dict::open(options(seg.name(), 4 << 20, 400));
  std::map<std::string, std::string> model;
  std::mt19937_64 rng(20240611);
  auto pick = [&](uint64_t n) { return uint64_t(rng() % n); };
  auto random_value = [&] {
    uint64_t r = pick(100), len;
    if (r < 70)
      len = pick(200);  // fits in a few units
    else if (r < 97)
      len = 200 + pick(4000);
    else
      len = 4200 + pick(60000);
    std::string v(len, '\0');
    uint64_t x = rng();
    for (uint64_t i = 0; i < len; ++i) {
      v[i] = char(x >> ((i % 8) * 8));
      if (i % 8 == 7) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    }
    return v;
  };

  int segment_full = 0, mismatches = 0;
  for (int op = 0; op < 20000; ++op) {
    std::string k = "k" + std::to_string(pick(kKeys));
    uint64_t what = pick(100);
    auto it = model.find(k);
    if (what < 55) {  // put (sometimes IfAbsent)
      std::string v = random_value();
      bool if_absent = pick(10) == 0;
      try {
        bool stored = put(*d, k, v, if_absent ? sbx::PutMode::IfAbsent : sbx::PutMode::Always);
        CHECK_EQ(stored, !(if_absent && it != model.end()));
        if (stored) model[k] = v;
      } catch (const sbx::Error& e) {
        // Legitimate only when the heap is short (the model keeps the old
        // value, which the engine must have kept too).
        if (e.code() != sbx::Errc::SegmentFull)
          record_failure(__FILE__, __LINE__,
                         std::string("put threw ") + errc_name(e.code()) + ": " + e.what());
        ++segment_full;
      }
    } else if (what < 80) {  // erase, checking the value it removes
      std::string old;
      bool erased = erase(*d, k, &old);
      CHECK_EQ(erased, it != model.end());
      if (erased && it != model.end()) {
        if (old != it->second) ++mismatches;
        model.erase(it);
      }
    } else {  // get
      std::string v;
      bool found = get(*d, k, &v);
      CHECK_EQ(found, it != model.end());
      if (found && it != model.end() && v != it->second) ++mismatches;
    }
    if (op % 2000 == 1999) {
      CHECK_EQ(d->size(), uint64_t(model.size()));
      CHECK_INTEGRITY(*d);
    }
  }
  CHECK_EQ(mismatches, 0);
  for (const auto& kv : model) {
    std::string v;
    CHECK(get(*d, kv.first, &v) && v == kv.second);
  }
  std::set<std::string> model_keys;
  for (const auto& kv : model) model_keys.insert(kv.first);
  CHECK(as_set(d->keys(true)) == model_keys);
  CHECK_EQ(d->size(), uint64_t(model.size()));
  // 4 MiB is ample for 300 keys of this mix: SegmentFull would mean leaked space.
  CHECK_EQ(segment_full, 0);
  CHECK_INTEGRITY(*d);
}

// The hot key's values are self-describing: every byte is the fill byte and
// the length is a function of it, so a reader can tell a torn value (bytes of
// two writes, or a length from one write and bytes from another) on its own.
uint64_t hot_length(uint8_t fill) { return 64 + uint64_t(fill) * 37; }

std::string hot_value(uint8_t fill) { return std::string(hot_length(fill), char(fill)); }

// Compares whole strings (one memcmp) rather than byte by byte: under TSan
// every instrumented byte read is an event in the thread's bounded history,
// and a byte loop over ~10 KB per read would push out the history TSan needs
// to show the reader's side of a report.
bool hot_value_ok(const std::string& v) {
  return !v.empty() && v == hot_value(uint8_t(v[0]));
}

// Loop count of each thread in test_threads (--iterations=N).  Under TSan
// every write into a block that a lock-free reader once read is a suppressed
// report costing milliseconds, so the TSan run lowers it.
int g_thread_iterations = 5000;

// 4 threads each own a key range and write/read/erase it; 2 threads overwrite
// one shared key while 2 threads read it lock-free.  All on one Dict object,
// so this is also what TSan (SHAREDBOX_SANITIZE=thread) is pointed at.
void test_threads() {
  SegmentGuard seg("threads");
  constexpr int kWorkers = 4, kKeysPerWorker = 50;
  constexpr int kHotWriters = 2, kHotReaders = 2;
  const int kIterations = g_thread_iterations, kHotWrites = g_thread_iterations;
  // 16 stripes, not the default 64 for 256 keys: check_integrity() and
  // keys(true) hold every stripe lock plus the allocator's at once, and TSan's
  // deadlock detector aborts a thread that holds 64 locks or more.  Fewer
  // stripes also make the workers' table resizes meet the hot key's readers.
  auto d = sbx::Dict::open(options(seg.name(), 32 << 20, 256, 16));
  CHECK(put(*d, "hot", hot_value(0)));

  // Each worker's final contents, compared with the dict once all are joined.
  std::vector<std::map<std::string, std::string>> final_models(kWorkers);
  std::atomic<int> hot_writers_left{kHotWriters};
  // Counted rather than CHECKed per read, so that a broken read path reports
  // how often it broke instead of flooding the output.
  std::atomic<uint64_t> hot_reads{0}, torn{0}, missing{0};
  std::vector<std::thread> threads;

  // A thread must not let an exception escape (std::terminate); record it.
  auto guarded = [](const char* who, auto body) {
    return [who, body]() mutable {
      try {
        body();
      } catch (const std::exception& e) {
        record_failure(__FILE__, __LINE__, std::string(who) + " threw: " + e.what());
      }
    };
  };

  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back(guarded("worker", [&, w] {
      std::map<std::string, std::string>& model = final_models[w];
      for (int i = 0; i < kIterations; ++i) {
        std::string k = "w" + std::to_string(w) + "_" + std::to_string(i % kKeysPerWorker);
        std::string v = std::to_string(w) + ":" + std::to_string(i) + ":" +
                        std::string(size_t(i * 131 % 3000), char('a' + w));
        if (!put(*d, k, v)) record_failure(__FILE__, __LINE__, "worker put returned false");
        model[k] = v;
        std::string got;
        if (!get(*d, k, &got) || got != v)
          record_failure(__FILE__, __LINE__, "worker read back a wrong value for " + k);
        if (i % 3 == 2) {
          std::string old;
          if (!erase(*d, k, &old) || old != v)
            record_failure(__FILE__, __LINE__, "worker erase of " + k + " failed");
          model.erase(k);
          if (contains(*d, k))
            record_failure(__FILE__, __LINE__, "erased key " + k + " still present");
        }
      }
    }));
  }
  for (int t = 0; t < kHotWriters; ++t) {
    threads.emplace_back(guarded("hot writer", [&, t] {
      for (int i = 0; i < kHotWrites; ++i)
        if (!put(*d, "hot", hot_value(uint8_t(t * 97 + i * 7))))
          record_failure(__FILE__, __LINE__, "hot put returned false");
      hot_writers_left.fetch_sub(1);
    }));
  }
  for (int t = 0; t < kHotReaders; ++t) {
    threads.emplace_back(guarded("hot reader", [&] {
      // Read until both writers are done (and at least a few times, so the
      // check is never vacuous on a machine that runs the writers first).
      uint64_t reads = 0;
      while (hot_writers_left.load() > 0 || reads < 100) {
        std::string v;
        if (!get(*d, "hot", &v)) {
          missing.fetch_add(1);  // it is never erased: get must always find it
        } else if (!hot_value_ok(v) && torn.fetch_add(1) == 0) {
          size_t same = 0;
          while (same < v.size() && v[same] == v[0]) ++same;
          record_failure(__FILE__, __LINE__,
                         "first torn hot value: " + std::to_string(v.size()) + " bytes, the first " +
                             std::to_string(same) + " of them " + std::to_string(uint8_t(v[0])) +
                             " (whose value has " + std::to_string(hot_length(uint8_t(v[0]))) +
                             " bytes)");
        }
        ++reads;
      }
      hot_reads.fetch_add(reads);
    }));
  }
  for (std::thread& t : threads) t.join();

  std::printf("  threads: %llu lock-free reads of the hot key, %llu torn, %llu missing\n",
              static_cast<unsigned long long>(hot_reads.load()),
              static_cast<unsigned long long>(torn.load()),
              static_cast<unsigned long long>(missing.load()));
  CHECK_EQ(torn.load(), uint64_t(0));
  CHECK_EQ(missing.load(), uint64_t(0));
  CHECK(hot_reads.load() >= uint64_t(kHotReaders) * 100);
  std::string hot;
  CHECK(get(*d, "hot", &hot) && hot_value_ok(hot));

  // Exact totals: every worker's surviving keys with their last values, plus "hot".
  uint64_t expected = 1;
  std::set<std::string> expected_keys = {"hot"};
  for (const auto& model : final_models) {
    expected += model.size();
    for (const auto& kv : model) {
      expected_keys.insert(kv.first);
      std::string v;
      CHECK(get(*d, kv.first, &v) && v == kv.second);
    }
  }
  // The totals are also known in closed form, independently of the models:
  // key j was last written at the last i with i % kKeysPerWorker == j, and
  // survives unless that iteration erased it (i % 3 == 2).
  uint64_t survivors = 0;
  for (int j = 0; j < kKeysPerWorker; ++j) {
    int last = (kIterations - 1 - j) / kKeysPerWorker * kKeysPerWorker + j;
    if (last % 3 != 2) ++survivors;
  }
  CHECK_EQ(expected, 1 + kWorkers * survivors);
  CHECK_EQ(d->size(), expected);
  CHECK(as_set(d->keys(true)) == expected_keys);
  CHECK_INTEGRITY(*d);
}

void test_stats() {
  SegmentGuard seg("stats");
  const uint64_t size = 2 << 20;
  auto d = sbx::Dict::open(options(seg.name(), size, 100, 8));
  sbx::Stats st = d->stats();
  CHECK_EQ(st.segment_bytes, size);
  CHECK_EQ(st.heap_bytes, sbx::heap_bytes_for(size, 8));
  CHECK_EQ(st.max_keys, uint64_t(100));
  CHECK_EQ(st.stripes, uint64_t(8));
  CHECK_EQ(st.entries, uint64_t(0));
  CHECK_EQ(st.key_bytes, uint64_t(0));
  CHECK_EQ(st.value_bytes, uint64_t(0));
  CHECK_EQ(st.record_bytes, uint64_t(0));
  CHECK_EQ(st.used_bytes, uint64_t(0));
  CHECK_EQ(st.largest_free_bytes, st.heap_bytes);
  CHECK_EQ(st.recoveries, uint64_t(0));

  std::map<std::string, std::string> model;
  for (int i = 0; i < 50; ++i)
    model["stat-key-" + std::to_string(i)] = std::string(size_t(i * 37), 'v');
  for (const auto& kv : model) put(*d, kv.first, kv.second);
  // Overwrites and erases must leave no trace in the totals.
  put(*d, "stat-key-3", "changed");
  model["stat-key-3"] = "changed";
  for (int i = 40; i < 50; ++i) {
    erase(*d, "stat-key-" + std::to_string(i));
    model.erase("stat-key-" + std::to_string(i));
  }

  uint64_t key_bytes = 0, value_bytes = 0, record_bytes = 0;
  for (const auto& kv : model) {
    key_bytes += kv.first.size();
    value_bytes += kv.second.size();
    // A record's block is its size in units, rounded up to the allocator's size class.
    record_bytes += sbx::size_class((sbx::kHeaderBytes + kv.first.size() + kv.second.size() + 63) / 64).units * 64;
  }
  st = d->stats();
  CHECK_EQ(st.entries, uint64_t(model.size()));
  CHECK_EQ(st.key_bytes, key_bytes);
  CHECK_EQ(st.value_bytes, value_bytes);
  CHECK_EQ(st.record_bytes, record_bytes);
  // Everything allocated is a record, an index table or a stripe's spare block.
  CHECK_EQ(st.used_bytes, st.record_bytes + st.table_bytes + st.spare_bytes);
  CHECK(st.spare_bytes <= uint64_t(st.stripes) * sbx::kSpareMaxUnits * 64);
  CHECK_EQ(st.used_bytes + st.free_bytes, st.heap_bytes);
  CHECK(st.table_bytes > 0);
  CHECK(st.largest_free_bytes <= st.free_bytes);
  CHECK_INTEGRITY(*d);
}

// ---------------------------------------------------------------------------
// Corrupted lock words.  A stray write can make a free robust mutex look held
// by a thread that never held it; pthread_mutex_lock would then wait forever.
// The engine must raise Corrupt after the stuck-lock window instead, must keep
// waiting for a real holder however long it holds, and must leave the dict
// consistent once the word is repaired.

// A second mapping of a segment, as a stray writer would have.
class RawMap {
 public:
  explicit RawMap(const std::string& name) {
    int fd = shm_open(("/" + name).c_str(), O_RDWR, 0);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0) {
      size_ = size_t(st.st_size);
      void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (p != MAP_FAILED) base_ = static_cast<uint8_t*>(p);
    }
    if (fd >= 0) close(fd);
  }
  ~RawMap() {
    if (base_) munmap(base_, size_);
  }
  bool ok() const { return base_ != nullptr; }
  sbx::SegmentHeader* header() const { return reinterpret_cast<sbx::SegmentHeader*>(base_); }
  pthread_mutex_t* alloc_mutex() const { return &header()->h_alloc.a_mutex; }
  pthread_mutex_t* stripe_mutex(uint32_t i) const {
    auto* st = reinterpret_cast<sbx::Stripe*>(base_ + header()->h_stripe_off);
    return &st[i].s_mutex;
  }

 private:
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
};

// Sleeps inside write(), i.e. while holding the stripe lock: a legitimate
// long hold (as a multi-GiB copy would be).
class SlowSource : public sbx::ValueSource {
 public:
  explicit SlowSource(int ms) : ms_(ms) {}
  uint64_t max_bytes() const override { return 4; }
  uint64_t write(uint8_t* dst, uint64_t) override {
    started.store(true);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms_));
    std::memcpy(dst, "slow", 4);
    return 4;
  }
  std::atomic<bool> started{false};

 private:
  int ms_;
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

void test_stuck_locks() {
  setenv("SHAREDBOX_STUCK_LOCK_TIMEOUT", "0.2", 1);
  SegmentGuard seg("stuck");
  auto d = sbx::Dict::open(options(seg.name(), 1 << 20, 100, 1));  // one stripe: every key on it
  RawMap raw(seg.name());
  CHECK(raw.ok());
  if (!raw.ok()) return;
  for (int i = 0; i < 10; ++i) put(*d, "k" + std::to_string(i), "v" + std::to_string(i));
  const int self_tid = int(syscall(SYS_gettid));
  // Too large for the stripe's spare block, so writing it needs the allocator.
  const std::string big(2000, 'b');

  struct Case {
    const char* what;
    pthread_mutex_t* m;
    int lock_word;
  };
  const Case cases[] = {
      {"allocator, owner that does not exist", raw.alloc_mutex(), 0x3ffffff0},
      {"allocator, waiters bit and no owner", raw.alloc_mutex(), int(0x80000000u)},
      {"stripe, owner that does not exist", raw.stripe_mutex(0), 0x20000000},
      {"stripe, live thread that is not the holder (pid 1)", raw.stripe_mutex(0), 1},
      {"stripe, this very thread", raw.stripe_mutex(0), self_tid},
  };
  for (const Case& c : cases) {
    std::fprintf(stderr, "  stuck lock: %s\n", c.what);
    c.m->__data.__lock = c.lock_word;
    auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS(sbx::Errc::Corrupt, put(*d, "new-key", big));
    CHECK(seconds_since(t0) < 5.0);  // the 0.2 s window plus slices, with room for ASan
    // Lock-free reads never touch the lock.
    CHECK(value_of(*d, "k3") == "v3");
    c.m->__data.__lock = 0;  // the repair a test may do; the engine never does
    CHECK(put(*d, "new-key", big));
    CHECK(erase(*d, "new-key"));
    CHECK_INTEGRITY(*d);
  }

  // A corrupted type field (here: the process-shared bit cleared, which
  // would make waiters sleep on a private futex) is refused at once.
  int kind = raw.alloc_mutex()->__data.__kind;
  raw.alloc_mutex()->__data.__kind = kind & ~128;
  CHECK_THROWS(sbx::Errc::Corrupt, put(*d, "new-key", big));
  raw.alloc_mutex()->__data.__kind = kind;
  CHECK_INTEGRITY(*d);

  // An operation that fails after publishing (the allocator lock is stuck
  // when erase frees the record) leaves its journal open; the next holder
  // of the stripe lock replays it, as for a dead owner.
  CHECK(put(*d, "k4", big));  // a block too large to become the stripe's spare
  raw.alloc_mutex()->__data.__lock = 0x3ffffff0;
  CHECK_THROWS(sbx::Errc::Corrupt, erase(*d, "k4"));
  CHECK(!contains(*d, "k4"));  // the tombstone was published
  CHECK_THROWS(sbx::Errc::Corrupt, put(*d, "k5", "overwritten"));  // replay needs the allocator
  raw.alloc_mutex()->__data.__lock = 0;
  CHECK(value_of(*d, "k5") == "v5");
  CHECK(put(*d, "k5", "overwritten"));
  CHECK(value_of(*d, "k5") == "overwritten");
  CHECK_EQ(d->size(), uint64_t(9));
  CHECK_INTEGRITY(*d);

  // A real holder is waited for however long it holds: the waiter sees the
  // holder record match the lock word and the owner alive.
  SlowSource slow(1000);  // five windows
  std::thread holder([&] { d->put(d->key("slow", 4), slow); });
  while (!slow.started.load()) std::this_thread::yield();
  auto t0 = std::chrono::steady_clock::now();
  bool ok = false;
  try {
    ok = put(*d, "k6", "after the slow one");
  } catch (const sbx::Error& e) {
    record_failure(__FILE__, __LINE__, std::string("waiting for a live holder threw: ") + e.what());
  }
  holder.join();
  CHECK(ok);
  CHECK(seconds_since(t0) > 0.5);
  CHECK(value_of(*d, "slow") == "slow");
  CHECK_INTEGRITY(*d);
  unsetenv("SHAREDBOX_STUCK_LOCK_TIMEOUT");
}

// A thread rewrites the header's region offsets between their real values and
// garbage as fast as it can while the main thread attaches over and over.
// Attach must validate and build from one copy of the header: each attach is
// either refused or gets the real geometry, which the operations after it use
// (with a second read of the header, a validated attach could map garbage).
void test_attach_header_race() {
  SegmentGuard g("hdrrace");
  auto d = sbx::Dict::open(options(g.name(), 1 << 20, 100, 4));
  CHECK(put(*d, "x", "1"));
  int fd = ::shm_open(("/" + g.name()).c_str(), O_RDWR, 0);
  CHECK(fd >= 0);
  void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  CHECK(p != MAP_FAILED);
  auto* words = reinterpret_cast<std::atomic<uint64_t>*>(
      static_cast<uint8_t*>(p) + offsetof(sbx::SegmentHeader, h_stripe_off));
  const uint64_t good = words->load();
  std::atomic<bool> stop{false};
  std::thread flipper([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      words->store(good * 977, std::memory_order_relaxed);
      words->store(good, std::memory_order_relaxed);
    }
  });
  int attached = 0, refused = 0;
  sbx::OpenOptions o = options(g.name(), 1 << 20, 100, 4);
  o.create = false;
  for (int i = 0; i < 10000; ++i) {
    std::unique_ptr<sbx::Dict> a;
    try {
      a = sbx::Dict::open(o);
    } catch (const sbx::Error& e) {
      CHECK(e.code() == sbx::Errc::Incompatible);
      ++refused;
      continue;
    }
    ++attached;
    std::string v;
    CHECK(get(*a, "x", &v) && v == "1");
    CHECK(put(*a, "y", std::to_string(i)));
  }
  stop.store(true);
  flipper.join();
  words->store(good);
  ::munmap(p, 4096);
  CHECK(attached > 0);
  CHECK(refused > 0);
  CHECK_INTEGRITY(*d);
}

// Read-modify-write, versions, waiting and named locks (coordination.cpp).

// Adds 1 to a decimal counter value (absent = 0), under the stripe lock.
class Increment : public sbx::UpdateFn {
 public:
  sbx::ValueSource* decide(const uint8_t* v, uint64_t len, bool present) override {
    long n = present ? std::stol(std::string(reinterpret_cast<const char*>(v), len)) : 0;
    out_ = std::to_string(n + 1);
    src_ = std::make_unique<StringSource>(out_);
    return src_.get();
  }

 private:
  std::string out_;
  std::unique_ptr<StringSource> src_;
};

void test_coordination() {
  SegmentGuard g("coord");
  auto d = sbx::Dict::open(options(g.name(), 1 << 20, 100, 4));
  auto key = [&](const std::string& k) { return d->key(k.data(), k.size()); };

  // update: concurrent increments lose nothing.
  {
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
      ts.emplace_back([&] {
        Increment inc;
        for (int i = 0; i < 5000; ++i) d->update(key("n"), inc);
      });
    for (auto& t : ts) t.join();
    CHECK(value_of(*d, "n") == "20000");
  }

  // version: changes on every write, never reused, absent = false.
  uint64_t v1 = 0, v2 = 0, v3 = 0, none = 0;
  CHECK(!d->version(key("v"), &none));
  CHECK(put(*d, "v", "a"));
  CHECK(d->version(key("v"), &v1));
  CHECK(put(*d, "v", "a"));  // the same value is still a write
  CHECK(d->version(key("v"), &v2));
  CHECK(erase(*d, "v"));
  CHECK(!d->version(key("v"), &none));
  CHECK(put(*d, "v", "b"));
  CHECK(d->version(key("v"), &v3));
  CHECK(v1 != 0 && v1 != v2 && v2 != v3 && v1 != v3);

  // wait_change: times out while nothing changes, wakes for a write.
  uint64_t now = 0;
  CHECK(!d->wait_change(key("v"), v3, 0.05, &now));
  CHECK(d->wait_change(key("v"), v2, 0.05, &now) && now == v3);  // already different
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    put(*d, "v", "c");
  });
  CHECK(d->wait_change(key("v"), v3, 10.0, &now));
  writer.join();
  uint64_t v4 = 0;
  CHECK(d->version(key("v"), &v4) && now == v4);
  std::thread eraser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    erase(*d, "v");
  });
  CHECK(d->wait_change(key("v"), v4, 10.0, &now) && now == 0);
  eraser.join();

  // Named locks: one slot per name, a bounded number of names.
  uint32_t a = d->named_lock("a");
  CHECK_EQ(d->named_lock("a"), a);
  CHECK_THROWS(sbx::Errc::InvalidArgument, d->named_lock(""));
  CHECK_THROWS(sbx::Errc::InvalidArgument, d->named_lock(std::string(44, 'x')));
  for (uint32_t i = 1; i < sbx::kNamedLocks; ++i) d->named_lock("lock" + std::to_string(i));
  CHECK_THROWS(sbx::Errc::TooManyLocks, d->named_lock("one too many"));
  CHECK_EQ(d->named_lock("lock5"), d->named_lock("lock5"));

  CHECK(d->lock_named(a, 1.0) == sbx::LockResult::Acquired);
  CHECK(d->named_locked(a));
  std::thread other([&] {
    CHECK(d->lock_named(a, 0.05) == sbx::LockResult::TimedOut);
    CHECK_THROWS(sbx::Errc::LockMisuse, d->unlock_named(a));
  });
  other.join();
  d->unlock_named(a);
  CHECK(!d->named_locked(a));
  CHECK_THROWS(sbx::Errc::LockMisuse, d->unlock_named(a));

  // A holder that dies: the next acquirer gets the lock and is told so, even
  // if locked() looked at the dead holder's lock first.
  for (bool probe_first : {false, true}) {
    pid_t pid = fork();
    if (pid == 0) {
      d->lock_named(a, 1.0);
      _exit(0);  // dies holding it
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (probe_first) CHECK(!d->named_locked(a));
    CHECK(d->lock_named(a, 1.0) == sbx::LockResult::AcquiredRecovered);
    d->unlock_named(a);
    CHECK(d->lock_named(a, 1.0) == sbx::LockResult::Acquired);
    d->unlock_named(a);
  }
  CHECK_INTEGRITY(*d);
}

// The allocator's size classes: exact to 16 units, then 8 per doubling, each
// class's size the largest request it takes, and never more than 12.5% over.
void test_size_classes() {
  uint32_t last_index = 0;
  for (uint64_t n = 1; n <= 5000; ++n) {
    sbx::SizeClass c = sbx::size_class(n);
    CHECK(c.units >= n);
    if (n <= 16) CHECK_EQ(c.units, n);
    if (n > 16) CHECK(c.units * 8 <= n * 9);
    CHECK(c.index >= last_index && c.index < sbx::kSizeClasses);
    if (n <= sbx::kLargestClassUnits) {
      CHECK_EQ(sbx::size_class_units(c.index), c.units);
      CHECK_EQ(sbx::size_class(c.units).index, c.index);
    } else {
      CHECK_EQ(c.index, sbx::kSizeClasses - 1);
      CHECK_EQ(c.units, n);
    }
    last_index = c.index;
  }
}

// The key hash is part of the segment layout: hash_key must give what its
// plain definition (a zero-filled word per 8 bytes, the tail by memcpy)
// gives, for every length and alignment, or keys stored by one build are not
// found by another.
uint64_t reference_hash(const unsigned char* p, size_t len, uint64_t seed) {
  constexpr uint64_t k1 = 0x9E3779B97F4A7C15ULL, k2 = 0xC2B2AE3D27D4EB4FULL;
  uint64_t h = seed ^ (uint64_t(len) * k1);
  for (size_t i = 0; i < len; i += 8) {
    uint64_t w = 0;
    std::memcpy(&w, p + i, len - i < 8 ? len - i : 8);
    h = sbx::rotl64(h ^ (w * k2), 31) * k1;
  }
  return sbx::mix64(h);
}

void test_key_hash() {
  std::mt19937_64 rng(7);
  unsigned char buf[64 + 8];
  for (int round = 0; round < 200; ++round) {
    for (unsigned char& b : buf) b = static_cast<unsigned char>(rng());
    const uint64_t seed = rng();
    for (size_t start = 0; start < 8; ++start)
      for (size_t len = 0; len <= 64; ++len)
        CHECK_EQ(sbx::hash_key(buf + start, len, seed), reference_hash(buf + start, len, seed));
  }
  // Fixed values (computed by the definition of layout version 2), so that a
  // change to the definition itself is caught too.
  CHECK_EQ(sbx::hash_key("key", 3, 1), 0xede38da7319f8aabULL);
  CHECK_EQ(sbx::hash_key("small:str:0000001", 17, 42), 0xecb43a2b3169e9f4ULL);
}

// key_bytes_equal against memcmp: every length up to 64, a difference at
// every position, every alignment.
// Dict::publish_seq, which a handle's value cache trusts: it moves by two on
// every put and erase of the stripe (odd only inside the publishing store)
// and on nothing else: not on reads, failed or no-op writes, or resizes.
void test_publish_seq() {
  SegmentGuard g("pubseq");
  auto d = sbx::Dict::open(options(g.name(), 1 << 20, 1000, 1));  // one stripe: every key
  auto key = [&](const std::string& k) { return d->key(k.data(), k.size()); };
  const uint64_t s0 = d->publish_seq(key("a"));
  CHECK(s0 % 2 == 0);
  CHECK(put(*d, "a", "1"));                       // insert
  CHECK_EQ(d->publish_seq(key("a")), s0 + 2);
  CHECK_EQ(d->publish_seq(key("b")), s0 + 2);     // the stripe's, not the key's
  CHECK(put(*d, "a", "2"));                       // overwrite
  CHECK(!put(*d, "a", "3", sbx::PutMode::IfAbsent));  // refused: nothing published
  CHECK_EQ(d->publish_seq(key("a")), s0 + 4);
  CHECK(value_of(*d, "a") == "2");                // reads move nothing
  CHECK(!erase(*d, "missing"));
  CHECK_EQ(d->publish_seq(key("a")), s0 + 4);
  Increment inc;
  d->update(key("n"), inc);                       // a read-modify-write publishes too
  CHECK_EQ(d->publish_seq(key("a")), s0 + 6);
  CHECK(erase(*d, "n"));
  CHECK_EQ(d->publish_seq(key("a")), s0 + 8);
  // 500 inserts grow the stripe's table several times: two a put, no more.
  for (int i = 0; i < 500; ++i) CHECK(put(*d, "k" + std::to_string(i), "v"));
  CHECK_EQ(d->publish_seq(key("a")), s0 + 8 + 2 * 500);
  CHECK(d->check_integrity().empty());
}

void test_key_compare() {
  unsigned char a[72];
  char b[72];
  for (size_t i = 0; i < sizeof a; ++i) a[i] = static_cast<unsigned char>('a' + i % 26);
  for (size_t start = 0; start < 8; ++start)
    for (size_t len = 0; len <= 64; ++len) {
      std::memcpy(b + 8 - start, a + start, len);
      CHECK(sbx::key_bytes_equal(a + start, b + 8 - start, len));
      for (size_t pos = 0; pos < len; ++pos) {
        b[8 - start + pos] ^= 0x40;
        CHECK(!sbx::key_bytes_equal(a + start, b + 8 - start, len));
        b[8 - start + pos] ^= 0x40;
      }
    }
}

// ---------------------------------------------------------------------------
// Pins (zero-copy views).

class AcceptAll : public sbx::PinCheck {
 public:
  void check(const uint8_t*, uint64_t, uint64_t) override {}
};

bool pin_key(sbx::Dict& d, const std::string& k, sbx::Pin* p) {
  AcceptAll all;
  return d.pin(d.key(k.data(), k.size()), all, p);
}

std::string pinned_value(const sbx::Pin& p) {
  return std::string(reinterpret_cast<const char*>(p.value), p.value_len);
}

void test_pins() {
  SegmentGuard seg("pins");
  auto d = sbx::Dict::open(options(seg.name(), 4 << 20, 64, 4));
  const std::string old_value(3000, 'o');
  CHECK(put(*d, "k", old_value));
  const uint64_t used_before = d->stats().used_bytes;

  // A view survives an overwrite and a delete, and keeps its block.
  sbx::Pin a, b;
  CHECK(pin_key(*d, "k", &a));
  CHECK(pin_key(*d, "k", &b));  // the same record: one shared entry
  CHECK_EQ(a.entry, b.entry);
  CHECK_EQ(d->pin_stats().pins, uint64_t(1));
  CHECK(put(*d, "k", std::string(100, 'n')));
  CHECK(pinned_value(a) == old_value);
  CHECK(d->pin_stats().pinned_bytes >= old_value.size());
  CHECK(d->check_integrity().empty());
  CHECK(erase(*d, "k"));
  CHECK(pinned_value(b) == old_value);
  d->unpin(a);
  CHECK(pinned_value(b) == old_value);  // b still holds it
  d->unpin(b);
  CHECK_EQ(d->pin_stats().pins, uint64_t(0));
  CHECK_EQ(d->pin_stats().pinned_bytes, uint64_t(0));
  CHECK(d->check_integrity().empty());
  CHECK(d->stats().used_bytes <= used_before);  // the old block went back
  sbx::Pin none;
  CHECK(!pin_key(*d, "absent", &none));

  // A block built in place and published; one abandoned.
  {
    std::string value = "HEAD" + std::string(5000, 'x');
    class Head : public sbx::ValueSource {
     public:
      uint64_t max_bytes() const override { return 4 + 5000; }
      uint64_t write(uint8_t* dst, uint64_t) override {
        std::memcpy(dst, "HEAD", 4);
        return 4;
      }
    } h;
    sbx::Pin built;
    d->begin_build(d->key("b", 1), h, 5000, &built);
    CHECK_EQ(built.data_at, uint64_t(4));
    std::memset(built.value + built.data_at, 'x', 5000);
    CHECK(!contains(*d, "b"));  // not published yet
    d->publish_built(d->key("b", 1), built);
    std::string got;
    CHECK(get(*d, "b", &got) && got == value);
    CHECK_THROWS(sbx::Errc::InvalidArgument, d->publish_built(d->key("b", 1), built));
    CHECK(put(*d, "b", "replaced"));
    CHECK(pinned_value(built) == value);  // the builder's array keeps reading it
    d->unpin(built);
    sbx::Pin dropped;
    d->begin_build(d->key("c", 1), h, 5000, &dropped);
    d->unpin(dropped);
    CHECK(!contains(*d, "c"));
    CHECK_EQ(d->pin_stats().pins, uint64_t(0));
    CHECK(d->check_integrity().empty());
  }

  // A process that dies holding pins of every kind: reclaimed, blocks freed.
  {
    CHECK(put(*d, "p", std::string(2000, 'p')));
    const uint64_t used = d->stats().used_bytes;
    std::fflush(nullptr);
    pid_t pid = ::fork();
    if (pid == 0) {
      sbx::Pin p;
      if (!pin_key(*d, "p", &p)) std::_Exit(3);
      put(*d, "p", std::string(10, 'q'));  // retires the pinned record
      class Head : public sbx::ValueSource {
       public:
        uint64_t max_bytes() const override { return 1000; }
        uint64_t write(uint8_t*, uint64_t) override { return 0; }
      } h;
      sbx::Pin b2;
      d->begin_build(d->key("z", 1), h, 1000, &b2);
      ::raise(SIGKILL);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status));
    CHECK_EQ(d->pin_stats().pins, uint64_t(0));  // pin_stats sweeps dead slots first
    CHECK(d->check_integrity().empty());
    CHECK(d->stats().used_bytes < used);  // the retired and the building blocks are free
  }

  // A process holds at most max_pins_per_process pins (8 in a small segment).
  {
    SegmentGuard small("pins_small");
    auto s = sbx::Dict::open(options(small.name(), 512 << 10, 64, 1));
    const uint32_t limit = s->pin_stats().max_pins_per_process;
    CHECK_EQ(limit, sbx::kPinMinEntries);
    std::vector<sbx::Pin> held(limit);
    for (uint32_t i = 0; i < limit; ++i) {
      std::string k = "k" + std::to_string(i);
      CHECK(put(*s, k, "v"));
      CHECK(pin_key(*s, k, &held[i]));
    }
    CHECK(put(*s, "one_more", "v"));
    sbx::Pin extra;
    CHECK_THROWS(sbx::Errc::TooManyViews, pin_key(*s, "one_more", &extra));
    CHECK(pin_key(*s, "k0", &extra));  // a record it pins already shares its entry
    s->unpin(extra);
    for (const sbx::Pin& p : held) s->unpin(p);
    CHECK(s->check_integrity().empty());
  }
}

// Threads take and drop views of a hot key while others overwrite and
// delete it: every view reads one whole value for as long as it is held, and
// at the end no pin and no block is left over.  Run under TSan too.
void test_pin_threads() {
  SegmentGuard seg("pin_threads");
  auto d = sbx::Dict::open(options(seg.name(), 32 << 20, 64, 4));
  CHECK(put(*d, "hot", hot_value(0)));
  const int kIterations = g_thread_iterations;
  std::atomic<int> writers_left{2};
  std::atomic<uint64_t> views{0}, torn{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int i = 0; i < kIterations; ++i) {
          if (i % 10 == 9) erase(*d, "hot");
          put(*d, "hot", hot_value(uint8_t(t * 97 + i * 7)));
        }
      } catch (const std::exception& e) {
        record_failure(__FILE__, __LINE__, std::string("writer threw: ") + e.what());
      }
      writers_left.fetch_sub(1);
    });
  }
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      try {
        std::vector<sbx::Pin> held;
        uint64_t n = 0;
        while (writers_left.load() > 0 || n < 100) {
          sbx::Pin p;
          if (pin_key(*d, "hot", &p)) {
            held.push_back(p);
            ++n;
          }
          if (held.size() > 4 || (!held.empty() && n % 3 == 0)) {
            for (const sbx::Pin& h : held)
              if (!hot_value_ok(pinned_value(h))) torn.fetch_add(1);
            for (const sbx::Pin& h : held) d->unpin(h);
            held.clear();
          }
        }
        for (const sbx::Pin& h : held) d->unpin(h);
        views.fetch_add(n);
      } catch (const std::exception& e) {
        record_failure(__FILE__, __LINE__, std::string("viewer threw: ") + e.what());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::printf("  pin_threads: %llu views, %llu torn\n", static_cast<unsigned long long>(views.load()),
              static_cast<unsigned long long>(torn.load()));
  CHECK_EQ(torn.load(), uint64_t(0));
  CHECK_EQ(d->pin_stats().pins, uint64_t(0));
  CHECK_EQ(d->pin_stats().pinned_bytes, uint64_t(0));
  auto problems = d->check_integrity();
  for (const std::string& p : problems) record_failure(__FILE__, __LINE__, p);
}

// ---------------------------------------------------------------------------
// Runner.

struct TestCase {
  const char* name;
  void (*fn)();
};

const TestCase kCases[] = {
    {"lifecycle", test_lifecycle},   {"basic", test_basic_ops},     {"max_keys", test_max_keys},
    {"segment_full", test_segment_full}, {"keys", test_keys},       {"churn", test_churn},
    {"threads", test_threads},       {"stats", test_stats},         {"stuck_locks", test_stuck_locks},
    {"attach_header_race", test_attach_header_race},
    {"coordination", test_coordination},
    {"size_classes", test_size_classes},
    {"key_hash", test_key_hash},
    {"key_compare", test_key_compare},
    {"publish_seq", test_publish_seq},
    {"pins", test_pins},
    {"pin_threads", test_pin_threads},
};

bool run_case(const TestCase& tc) {
  g_case_failures.store(0);
  auto start = std::chrono::steady_clock::now();
  try {
    tc.fn();
  } catch (const sbx::Error& e) {
    record_failure(__FILE__, __LINE__,
                   std::string("unexpected sbx::Error ") + errc_name(e.code()) + ": " + e.what());
  } catch (const std::exception& e) {
    record_failure(__FILE__, __LINE__, std::string("unexpected exception: ") + e.what());
  }
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                  .count();
  int failures = g_case_failures.load();
  std::printf("[%s] %s (%.0f ms)\n", failures ? "FAIL" : " OK ", tc.name, ms);
  std::fflush(stdout);
  return failures == 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<const TestCase*> selected;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--list") {
      for (const TestCase& tc : kCases) std::printf("%s\n", tc.name);
      return 0;
    }
    if (arg.rfind("--iterations=", 0) == 0) {
      g_thread_iterations = std::atoi(arg.c_str() + std::strlen("--iterations="));
      if (g_thread_iterations < 1) {
        std::fprintf(stderr, "--iterations needs a positive count\n");
        return 2;
      }
      continue;
    }
    const TestCase* found = nullptr;
    for (const TestCase& tc : kCases)
      if (arg == tc.name) found = &tc;
    if (!found) {
      std::fprintf(stderr, "unknown test case '%s' (--list shows them)\n", arg.c_str());
      return 2;
    }
    selected.push_back(found);
  }
  if (selected.empty())
    for (const TestCase& tc : kCases) selected.push_back(&tc);

  int passed = 0, failed = 0;
  for (const TestCase* tc : selected) (run_case(*tc) ? passed : failed)++;
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
