// fuzz_segment.cpp — fuzzes everything the engine reads from a segment: the
// header checks at attach, the robust mutexes, stripe tables, slot words,
// record headers, journals and the allocator's bitmap and journal.
//
// An input is an edit script over one of a few valid segment images (the
// "templates", built deterministically at start-up):
//
//   byte 0          b: template index b % T (T templates), and the operation
//                   the sequence starts with, b / T
//   then, repeated  3 bytes little-endian offset (mod the image size), 1 byte
//                   XOR mask applied at that offset
//
// Each input: copy the template into a named segment, apply the edits, attach
// with sbx::Dict::open (create=false) and run every kind of operation.  An
// sbx::Error is an acceptable answer to corruption; a crash, a sanitizer
// report, any other exception, an input that runs past the watchdog, or a
// lock left held afterwards is a bug.
//
// Two ways to run it (see CMakeLists.txt):
//   * libFuzzer (clang, -DSHAREDBOX_LIBFUZZER=ON): this file provides
//     LLVMFuzzerTestOneInput and libFuzzer provides main;
//   * the standalone driver below (any compiler, normally with ASan+UBSan),
//     as tests/test_engine_cpp.py does:
//       sharedbox_fuzz_segment [--runs=N] [--seconds=S] [--seed=X] PATH...
//     replays every file of each corpus PATH, then runs N random inputs
//     (fixed seed: the same N inputs every run), stopping early after S
//     seconds.  SBX_FUZZ_RUNS sets N when --runs is absent.
//       sharedbox_fuzz_segment --write-seeds DIR
//     writes the seed corpus (tests/fuzz/make-corpus.sh).
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "sharedbox/dict.hpp"
#include "sharedbox/errors.hpp"
#include "sharedbox/layout.hpp"

namespace {

// ---------------------------------------------------------------------------
// Values and templates.

class StringSource : public sbx::ValueSource {
 public:
  explicit StringSource(std::string s) : s_(std::move(s)) {}
  uint64_t max_bytes() const override { return s_.size(); }
  uint64_t write(uint8_t* dst, uint64_t) override {
    if (!s_.empty()) std::memcpy(dst, s_.data(), s_.size());
    return s_.size();
  }

 private:
  std::string s_;
};

class StringSink : public sbx::ValueSink {
 public:
  std::string out;
  void take(const uint8_t* v, uint64_t len, uint64_t, bool) override {
    out.assign(reinterpret_cast<const char*>(v), len);
  }
  void reset() override { out.clear(); }
};

// Values shaped like the binding's encodings (tag byte, then payload), so the
// records look like real ones; the engine itself treats them as bytes.
std::string encoded_value(int i) {
  switch (i % 6) {
    case 0: return std::string("\x00", 1);                               // None
    case 1: return std::string("\x03", 1) + std::string(8, char(i));     // int64
    case 2: return "\x05" + std::string(size_t(i % 40), 's');           // str
    case 3: return "\x06" + std::string(size_t(i * 7 % 300), 'b');      // bytes
    case 4: return "\x07\x80\x05" + std::string(size_t(20 + i), 'p');  // pickle
    default: {                                                          // ndarray
      std::string v("\x08\x01\x01\x04\x00", 5);
      v += std::string(8, '\0') + std::string(8, '\0') + "'<f8'";
      return v + std::string(size_t(64 + i * 8), '\x3f');
    }
  }
}

struct Template {
  const char* what;
  uint64_t size, max_keys;
  uint32_t stripes;
  int keys, erase_every;  // keys inserted; every erase_every-th then erased (0: none)
  std::string name;       // the working segment inputs are applied to
  std::vector<uint8_t> image;
  std::vector<std::string> key_names;
  uint8_t* raw = nullptr;  // our own mapping of the working segment
};

Template g_templates[] = {
    {"four stripes, keys of every kind, tombstones", 64 << 10, 64, 4, 40, 3, {}, {}, {}},
    {"one stripe", 32 << 10, 16, 1, 12, 4, {}, {}, {}},
    {"eight stripes, no keys (no tables yet)", 32 << 10, 32, 8, 0, 0, {}, {}, {}},
};
constexpr size_t kTemplateCount = sizeof g_templates / sizeof g_templates[0];

std::string key_name(int i) { return "key" + std::to_string(i); }

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "fuzz_segment: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

uint8_t* map_segment(const std::string& name, uint64_t size) {
  int fd = shm_open(("/" + name).c_str(), O_RDWR, 0);
  if (fd < 0) die("cannot open " + name);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) die("cannot map " + name);
  return static_cast<uint8_t*>(p);
}

void remove_segments() {
  for (Template& t : g_templates)
    if (!t.name.empty()) shm_unlink(("/" + t.name).c_str());
}

// Builds each template once: a fresh segment whose hash seed, creator pid and
// creation time are then fixed, so that the same input means the same thing
// in every run (and in the committed corpus).
void build_templates() {
  std::atexit(remove_segments);
  for (size_t ti = 0; ti < kTemplateCount; ++ti) {
    Template& t = g_templates[ti];
    t.name = "sbx_fuzz_" + std::to_string(getpid()) + "_" + std::to_string(ti);
    sbx::OpenOptions o;
    o.name = t.name;
    o.size = t.size;
    o.max_keys = t.max_keys;
    o.stripes = t.stripes;
    sbx::Dict::open(o);  // created, then closed at once
    t.raw = map_segment(t.name, t.size);
    auto* h = reinterpret_cast<sbx::SegmentHeader*>(t.raw);
    h->h_hash_seed = 0x5eed0000u + ti;
    h->h_creator_pid = 1;  // "alive": a corrupted ready mark is not blamed on it
    h->h_created_unix_ns = 0;
    o.create = false;
    auto d = sbx::Dict::open(o);  // attaches: caches the fixed seed
    for (int i = 0; i < t.keys; ++i) {
      t.key_names.push_back(key_name(i));
      StringSource src(encoded_value(i));
      d->put(d->key(t.key_names.back().data(), t.key_names.back().size()), src);
    }
    for (int i = 0; t.erase_every && i < t.keys; i += t.erase_every)
      d->erase(d->key(t.key_names[size_t(i)].data(), t.key_names[size_t(i)].size()));
    if (!d->check_integrity().empty()) die("template is not consistent");
    d.reset();
    t.image.assign(t.raw, t.raw + t.size);
  }
}

// ---------------------------------------------------------------------------
// One input.

struct Counters {
  uint64_t inputs = 0, attach_refused = 0, ops = 0, op_errors = 0;
} g_count;

const char* g_current = "";  // what the watchdog names when an input hangs

template <class F>
void attempt(F&& f) {
  ++g_count.ops;
  try {
    f();
  } catch (const sbx::Error&) {
    ++g_count.op_errors;  // an acceptable answer to corruption
  }
}

// Every lock the engine took must have been released: the thread's robust
// list (glibc links each held robust mutex into it) must be empty again.  A
// lock left held would hang every other process.
void check_no_lock_held() {
  struct robust_list_head* head = nullptr;
  size_t len = 0;
  if (syscall(SYS_get_robust_list, 0, &head, &len) != 0 || !head) return;
  if (head->list.next != &head->list) die(std::string("a lock was left held after input ") + g_current);
}

// Runs every kind of operation, starting with the `first`-th (mod their
// number) and wrapping around: which operation meets a corrupt structure
// first decides which locks are held when it does.
void run_ops(sbx::Dict& d, const Template& t, unsigned first) {
  auto k = [&](const std::string& s) { return d.key(s.data(), s.size()); };
  const std::vector<std::string>& names = t.key_names;
  std::vector<std::function<void()>> ops = {
      [&] {
        for (const std::string& key : names) {
          attempt([&] {
            StringSink sink;
            d.get(k(key), sink);
          });
          attempt([&] { d.contains(k(key)); });
        }
      },
      [&] { attempt([&] { d.keys(false); }); },
      [&] { attempt([&] { d.keys(true); }); },
      [&] { attempt([&] { d.size(); }); },
      [&] { attempt([&] { d.stats(); }); },
      [&] { attempt([&] { d.check_integrity(); }); },
      [&] {
        attempt([&] {
          StringSource src(encoded_value(2));
          d.put(k("fuzz-new"), src);
        });
      },
      [&] {
        if (names.empty()) return;
        attempt([&] {
          StringSource src(std::string(700, 'o'));  // an overwrite with a larger value
          d.put(k(names.back()), src);
        });
        attempt([&] {
          StringSource src("x");
          d.put(k(names[names.size() / 2]), src, sbx::PutMode::IfAbsent);
        });
      },
      [&] {
        if (names.empty()) return;
        attempt([&] { d.erase(k(names[1 % names.size()])); });
        attempt([&] {
          StringSink old;
          d.erase(k(names[names.size() - 1]), &old);
        });
      },
      [&] {
        attempt([&] {
          StringSource src(std::string(4000, 'L'));  // spans several units; may not fit
          d.put(k("fuzz-large"), src);
        });
        attempt([&] {
          StringSink sink;
          d.get(k("fuzz-new"), sink);
        });
        attempt([&] { d.erase(k("fuzz-large")); });
      },
  };
  for (size_t i = 0; i < ops.size(); ++i) ops[(first + i) % ops.size()]();
  attempt([&] { d.check_integrity(); });
}

void run_input(const uint8_t* data, size_t size) {
  if (size == 0) return;
  Template& t = g_templates[data[0] % kTemplateCount];
  const unsigned first_op = data[0] / kTemplateCount;
  std::memcpy(t.raw, t.image.data(), t.size);
  for (size_t i = 1; i + 4 <= size; i += 4) {
    uint64_t off = (uint64_t(data[i]) | uint64_t(data[i + 1]) << 8 | uint64_t(data[i + 2]) << 16) %
                   t.size;
    t.raw[off] ^= data[i + 3];
  }
  ++g_count.inputs;
  sbx::OpenOptions o;
  o.name = t.name;
  o.create = false;
  std::unique_ptr<sbx::Dict> d;
  try {
    d = sbx::Dict::open(o);
  } catch (const sbx::Error&) {
    ++g_count.attach_refused;
    return;
  }
  run_ops(*d, t, first_op);
  d.reset();
  check_no_lock_held();
}

void setup_once() {
  static bool done = [] {
    // A stuck lock (a corrupted lock word) costs one window per operation that
    // needs it; a few milliseconds keep inputs fast.  Nothing else uses these
    // segments, so no real holder can be mistaken for a stuck one.
    setenv("SHAREDBOX_STUCK_LOCK_TIMEOUT", "0.002", 0);
    build_templates();
    return true;
  }();
  (void)done;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  setup_once();
  run_input(data, size);
  return 0;
}

#ifndef SBX_LIBFUZZER
// ---------------------------------------------------------------------------
// The standalone driver.
namespace {

constexpr unsigned kWatchdogSeconds = 30;  // per input; generous for ASan on a loaded machine

void on_alarm(int) {
  const char msg[] = "fuzz_segment: an input ran past the watchdog (endless loop or hang): ";
  (void)!write(2, msg, sizeof msg - 1);
  (void)!write(2, g_current, strlen(g_current));
  (void)!write(2, "\n", 1);
  _exit(3);
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::vector<std::string> corpus_files(const std::string& path) {
  std::vector<std::string> out;
  struct stat st;
  if (stat(path.c_str(), &st) != 0) die("no such corpus: " + path);
  if (!S_ISDIR(st.st_mode)) return {path};
  DIR* dir = opendir(path.c_str());
  while (dirent* e = readdir(dir))
    if (e->d_name[0] != '.') out.push_back(path + "/" + e->d_name);
  closedir(dir);
  std::sort(out.begin(), out.end());
  return out;
}

// Offsets worth aiming at in template t: the lock words and holder fields,
// stripe lines, journals, header fields, bitmap and the start of the heap.
std::vector<uint64_t> interesting_offsets(const Template& t) {
  auto* h = reinterpret_cast<const sbx::SegmentHeader*>(t.image.data());
  std::vector<uint64_t> v;
  const uint64_t alloc = offsetof(sbx::SegmentHeader, h_alloc);
  for (uint64_t b = 0; b < sizeof(sbx::AllocState); ++b) v.push_back(alloc + b);
  for (uint64_t b = 0; b < 128; ++b) v.push_back(b);  // identity and geometry
  v.push_back(offsetof(sbx::SegmentHeader, h_reserved_keys));
  v.push_back(offsetof(sbx::SegmentHeader, h_recount_needed));
  for (uint32_t s = 0; s < h->h_stripes; ++s)
    for (uint64_t b = 0; b < sizeof(sbx::Stripe); ++b)
      v.push_back(h->h_stripe_off + s * sizeof(sbx::Stripe) + b);
  for (uint64_t b = 0; b < 64; ++b) v.push_back(h->h_bitmap_off + b);
  for (uint64_t b = 0; b < 4096 && h->h_heap_off + b < t.size; ++b) v.push_back(h->h_heap_off + b);
  return v;
}

std::vector<uint8_t> edit(uint8_t tmpl, std::initializer_list<std::pair<uint64_t, uint8_t>> edits) {
  std::vector<uint8_t> in{tmpl};
  for (auto& e : edits) {
    in.push_back(uint8_t(e.first));
    in.push_back(uint8_t(e.first >> 8));
    in.push_back(uint8_t(e.first >> 16));
    in.push_back(e.second);
  }
  return in;
}

// Edits that set a 32-bit word whose template value is v0 to v.
void set_u32(std::vector<uint8_t>& in, uint64_t off, uint32_t v0, uint32_t v) {
  uint32_t x = v0 ^ v;
  for (int b = 0; b < 4; ++b)
    if (uint8_t(x >> (8 * b))) {
      auto more = edit(0, {{off + uint64_t(b), uint8_t(x >> (8 * b))}});
      in.insert(in.end(), more.begin() + 1, more.end());
    }
}

int write_seeds(const std::string& dir) {
  mkdir(dir.c_str(), 0755);
  auto save = [&](const std::string& name, const std::vector<uint8_t>& in) {
    std::ofstream f(dir + "/" + name, std::ios::binary);
    f.write(reinterpret_cast<const char*>(in.data()), std::streamsize(in.size()));
  };
  for (size_t ti = 0; ti < kTemplateCount; ++ti) save("valid-t" + std::to_string(ti), {uint8_t(ti)});
  const Template& t = g_templates[0];
  auto* h = reinterpret_cast<const sbx::SegmentHeader*>(t.image.data());
  const uint64_t alloc_lock = offsetof(sbx::SegmentHeader, h_alloc) +
                              offsetof(sbx::AllocState, a_mutex) + offsetof(__pthread_mutex_s, __lock);
  const uint64_t alloc_kind = alloc_lock - offsetof(__pthread_mutex_s, __lock) +
                              offsetof(__pthread_mutex_s, __kind);
  const uint64_t s0 = h->h_stripe_off;
  const uint64_t s0_lock = s0 + offsetof(sbx::Stripe, s_mutex) + offsetof(__pthread_mutex_s, __lock);
  const uint64_t s0_op = s0 + offsetof(sbx::Stripe, s_journal) + offsetof(sbx::Journal, j_op);
  const uint64_t s0_ref = s0 + offsetof(sbx::Stripe, s_table_ref);
  const uint64_t a_op = offsetof(sbx::SegmentHeader, h_alloc) + offsetof(sbx::AllocState, a_op);
  const uint64_t a_target = offsetof(sbx::SegmentHeader, h_alloc) + offsetof(sbx::AllocState, a_target);
  std::vector<uint8_t> in;

  in = {0}; set_u32(in, alloc_lock, 0, 0x3ffffff0); save("alloc-lock-owner-never-existed", in);
  in = {0}; set_u32(in, alloc_lock, 0, 1); save("alloc-lock-owner-pid1", in);
  in = {0}; set_u32(in, s0_lock, 0, 0x80000000u); save("stripe0-lock-waiters-no-owner", in);
  in = {0}; set_u32(in, s0_lock, 0, 0x40000000u | 0x3ffffff0); save("stripe0-owner-died", in);
  in = {0}; set_u32(in, s0_lock, 0, 0x40000000u | 0x3ffffff0); set_u32(in, s0_op, 0, sbx::kOpPut);
  save("stripe0-owner-died-put-journal-open", in);
  in = {0}; set_u32(in, s0_op, 0, sbx::kOpResize); save("stripe0-resize-journal-open", in);
  in = edit(0, {{alloc_kind, 0x80}}); save("alloc-lock-not-process-shared", in);
  in = edit(0, {{alloc_kind, 0x20}}); save("alloc-lock-priority-inheritance", in);
  // A dead allocator whose journal names a target inside a stripe's mutex:
  // the replay must refuse to write there (in template 1 the replay runs
  // while this thread holds that very mutex, in check_integrity).
  for (uint8_t ti : {uint8_t(0), uint8_t(1)}) {
    in = {uint8_t(ti + 6 * kTemplateCount)};  // starts with a put: alloc under a stripe lock
    set_u32(in, alloc_lock, 0, 0x40000000u | 0x3ffffff0);
    set_u32(in, a_op, 0, sbx::kAllocAlloc);
    uint64_t target0 = 0;
    std::memcpy(&target0, g_templates[ti].image.data() + a_target, 8);
    uint64_t want = s0 + offsetof(sbx::Stripe, s_mutex);
    for (int b = 0; b < 8; ++b) {
      uint8_t x = uint8_t((target0 ^ want) >> (8 * b));
      if (x) in.insert(in.end(), {uint8_t(a_target + b), uint8_t((a_target + b) >> 8),
                                  uint8_t((a_target + b) >> 16), x});
    }
    save("alloc-replay-target-in-a-mutex-t" + std::to_string(ti), in);
  }
  save("magic", edit(0, {{0, 0x01}}));
  save("version", edit(0, {{offsetof(sbx::SegmentHeader, h_version), 0x02}}));
  save("ready-mark", edit(0, {{offsetof(sbx::SegmentHeader, h_ready), 0x10}}));
  save("stripe-count", edit(0, {{offsetof(sbx::SegmentHeader, h_stripes), 0x03}}));
  save("heap-offset", edit(0, {{offsetof(sbx::SegmentHeader, h_heap_off) + 1, 0x10}}));
  save("stripe0-table-log2", edit(0, {{s0_ref, 0x07}}));
  save("stripe0-table-offset", edit(0, {{s0_ref + 2, 0x40}}));
  save("stripe0-gen-odd", edit(0, {{s0 + offsetof(sbx::Stripe, s_table_gen), 0x01}}));
  // A stripe count near 2^64: the resize it triggers must not loop forever.
  save("stripe0-count-huge", edit(uint8_t(6 * kTemplateCount),
                                  {{s0 + offsetof(sbx::Stripe, s_count) + 7, 0x80}}));
  save("reserved-keys", edit(0, {{offsetof(sbx::SegmentHeader, h_reserved_keys), 0x7f}}));
  save("bitmap-word0", edit(0, {{h->h_bitmap_off, 0xff}, {h->h_bitmap_off + 1, 0xff}}));
  // The first record: stamp odd, key length and value length huge.
  const uint64_t r0 = h->h_heap_off;
  save("record0-stamp-odd", edit(0, {{r0 + offsetof(sbx::RecordHeader, r_stamp), 0x01}}));
  save("record0-klen", edit(0, {{r0 + offsetof(sbx::RecordHeader, r_klen_flags) + 2, 0x80}}));
  save("record0-vlen", edit(0, {{r0 + offsetof(sbx::RecordHeader, r_vlen) + 5, 0x01}}));
  save("record0-units", edit(0, {{r0 + offsetof(sbx::RecordHeader, r_units), 0xf0}}));
  save("one-stripe-everything-at-once",
       edit(1, {{0x1010, 0x55}, {0x1038, 0x01}, {0x1040, 0x01}, {0x1048, 0x33}, {0x3000, 0xff}}));
  std::printf("seeds written to %s\n", dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t runs = 2000, seed = 1;
  double seconds = 1e9;
  if (const char* e = getenv("SBX_FUZZ_RUNS")) runs = strtoull(e, nullptr, 10);
  std::vector<std::string> paths;
  std::string seeds_dir;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--runs=", 0) == 0) runs = strtoull(a.c_str() + 7, nullptr, 10);
    else if (a.rfind("--seconds=", 0) == 0) seconds = atof(a.c_str() + 10);
    else if (a.rfind("--seed=", 0) == 0) seed = strtoull(a.c_str() + 7, nullptr, 10);
    else if (a == "--write-seeds" && i + 1 < argc) seeds_dir = argv[++i];
    else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "usage: %s [--runs=N] [--seconds=S] [--seed=X] CORPUS...\n"
                           "       %s --write-seeds DIR\n", argv[0], argv[0]);
      return 2;
    } else paths.push_back(a);
  }
  setup_once();
  if (!seeds_dir.empty()) return write_seeds(seeds_dir);
  signal(SIGALRM, on_alarm);
  auto start = std::chrono::steady_clock::now();

  uint64_t replayed = 0;
  std::vector<std::vector<uint8_t>> corpus;
  for (const std::string& p : paths)
    for (const std::string& f : corpus_files(p)) {
      corpus.push_back(read_file(f));
      static std::string current;
      current = f;
      g_current = current.c_str();
      alarm(kWatchdogSeconds);
      LLVMFuzzerTestOneInput(corpus.back().data(), corpus.back().size());
      alarm(0);
      ++replayed;
    }

  // Random inputs: a corpus entry (or a bare template) plus fresh edits, half
  // of them aimed at the offsets the engine follows, a third of them single bits.
  std::mt19937_64 rng(seed);
  std::vector<std::vector<uint64_t>> aimed;
  for (const Template& t : g_templates) aimed.push_back(interesting_offsets(t));
  static const unsigned kEditCounts[] = {1, 1, 2, 3, 4, 8, 16, 64};
  uint64_t done = 0;
  char label[64];
  for (; done < runs; ++done) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > seconds)
      break;
    std::vector<uint8_t> in;
    if (!corpus.empty() && rng() % 2) in = corpus[rng() % corpus.size()];
    if (in.empty()) in.push_back(uint8_t(rng()));
    const Template& t = g_templates[in[0] % kTemplateCount];
    const std::vector<uint64_t>& hot = aimed[in[0] % kTemplateCount];
    unsigned n = kEditCounts[rng() % (sizeof kEditCounts / sizeof kEditCounts[0])];
    for (unsigned e = 0; e < n; ++e) {
      uint64_t off = rng() % 2 ? hot[rng() % hot.size()] : rng() % t.size;
      uint8_t x = rng() % 3 == 0 ? uint8_t(1u << (rng() % 8)) : uint8_t(1 + rng() % 255);
      in.insert(in.end(), {uint8_t(off), uint8_t(off >> 8), uint8_t(off >> 16), x});
    }
    snprintf(label, sizeof label, "random input %llu (seed %llu)", (unsigned long long)done,
             (unsigned long long)seed);
    g_current = label;
    alarm(kWatchdogSeconds);
    LLVMFuzzerTestOneInput(in.data(), in.size());
    alarm(0);
  }
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("fuzz_segment: %llu corpus inputs, %llu random inputs (seed %llu) in %.1f s; "
              "%llu refused at attach, %llu operations, %llu raised sbx::Error; "
              "0 crashes, 0 hangs\n",
              (unsigned long long)replayed, (unsigned long long)done, (unsigned long long)seed,
              took, (unsigned long long)g_count.attach_refused, (unsigned long long)g_count.ops,
              (unsigned long long)g_count.op_errors);
  return 0;
}
#endif  // SBX_LIBFUZZER
