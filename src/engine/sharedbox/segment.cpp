// segment.cpp — creating, attaching to and removing a segment, and laying out
// a new one.  Everything here runs before the segment is shared (creation) or
// reads only a private copy of the identity block, which is immutable once
// the segment has its name.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "sharedbox/dict.hpp"
#include "sharedbox/pins.hpp"
#include "sharedbox/robust_mutex.hpp"

namespace sbx {
namespace {

constexpr const char* kShmDir = "/dev/shm";
constexpr size_t kNameMax = 255;  // NAME_MAX of /dev/shm, without the leading '/'

uint64_t round_up(uint64_t x, uint64_t to) { return (x + to - 1) / to * to; }

std::string errno_text(int e) { return std::strerror(e); }

[[noreturn]] void throw_errno(const std::string& what, int e) {
  if (e == EACCES || e == EPERM)
    throw Error(Errc::PermissionDenied, what + ": permission denied", e);
  throw Error(Errc::System, what + ": " + errno_text(e), e);
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Where each region of a new segment starts, for a given size and stripe count.
struct Geometry {
  uint64_t stripe_off, pin_off, bitmap_off, heap_off, heap_units, bitmap_words;
  uint32_t pin_entries;
};

bool compute_geometry(uint64_t size, uint32_t stripes, Geometry* g) {
  g->stripe_off = kPage;
  g->pin_off = round_up(g->stripe_off + uint64_t(stripes) * sizeof(Stripe), kPage);
  // Pins per process: about 1/128 of the segment for the whole pin table,
  // between kPinMinEntries and kPinMaxEntries (1 MiB of a 128 MiB segment).
  g->pin_entries = kPinMaxEntries;
  while (g->pin_entries > kPinMinEntries &&
         uint64_t(kPinSlots) * g->pin_entries * sizeof(PinEntry) * 128 > size)
    g->pin_entries /= 2;
  uint64_t after_pins = round_up(g->pin_off + uint64_t(kPinSlots) * pin_slot_bytes(g->pin_entries), kPage);
  if (after_pins >= size) return false;
  g->bitmap_off = after_pins;
  // One bit of bitmap per unit of heap: heap_units ~= rest * 8 / (8 * 64 + 1).
  uint64_t rest = size - after_pins;
  uint64_t units = rest * 8 / (8 * kUnit + 1);
  for (;;) {
    uint64_t words = (units + 63) / 64;
    uint64_t heap_off = round_up(g->bitmap_off + words * 8, kPage);
    if (heap_off < size && heap_off + units * kUnit <= size) {
      g->bitmap_words = words;
      g->heap_off = heap_off;
      g->heap_units = units;
      return units > 0;
    }
    if (units == 0) return false;
    units -= units / 64 + 1;
  }
}

uint64_t now_unix_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// Lays out a freshly truncated (all-zero) segment.  Runs before h_ready is set,
// so no other process reads any of it yet.
void initialise(uint8_t* base, uint64_t size, const OpenOptions& o, uint32_t stripes,
                const Geometry& g) {
  auto* h = reinterpret_cast<SegmentHeader*>(base);
  // Magic and version first: an attacher that sees them knows the segment is
  // ours and still being built, rather than foreign.
  h->h_magic = kMagic;
  h->h_version = kLayoutVersion;
  h->h_header_bytes = sizeof(SegmentHeader);
  h->h_creator_pid = uint32_t(getpid());
  h->h_created_unix_ns = now_unix_ns();
  h->h_segment_bytes = size;
  h->h_max_keys = o.max_keys;
  h->h_stripes = stripes;
  h->h_mode = o.mode;
  h->h_stripe_off = g.stripe_off;
  h->h_bitmap_off = g.bitmap_off;
  h->h_heap_off = g.heap_off;
  h->h_heap_units = g.heap_units;
  h->h_pin_off = g.pin_off;
  h->h_pin_entries = g.pin_entries;
  std::random_device rd;
  h->h_hash_seed = (uint64_t(rd()) << 32) ^ rd() ^ h->h_created_unix_ns;
  init_robust_mutex(&h->h_alloc.a_mutex);
  for (NamedLock& l : h->h_locks) init_robust_mutex(&l.l_mutex);
  for (uint32_t i = 0; i < kPinSlots; ++i)
    init_robust_mutex(&reinterpret_cast<PinSlot*>(base + g.pin_off + i * pin_slot_bytes(g.pin_entries))->p_mutex);
  h->h_alloc.a_reserved_low.store(0, std::memory_order_relaxed);  // nothing in the heap yet
  h->h_alloc.a_reserved_high.store(g.heap_units, std::memory_order_relaxed);
  auto* st = reinterpret_cast<Stripe*>(base + g.stripe_off);
  for (uint32_t i = 0; i < stripes; ++i) {
    init_robust_mutex(&st[i].s_mutex);
    st[i].s_next_stamp.store(1, std::memory_order_relaxed);
  }
  // Bits past the last heap unit are permanently "used" so that no search
  // ever returns them.
  auto* bm = reinterpret_cast<uint64_t*>(base + g.bitmap_off);
  uint64_t tail = g.bitmap_words * 64 - g.heap_units;
  if (tail) bm[g.bitmap_words - 1] = ~uint64_t(0) << (64 - tail);
  h->h_ready.store(kReadyMark, std::memory_order_release);
}

bool pid_alive(uint32_t pid) {
  if (pid == 0) return true;
  return ::kill(pid_t(pid), 0) == 0 || errno == EPERM;
}

}  // namespace

uint32_t default_stripes(uint64_t max_keys) {
  // One stripe per ~4 keys, between 8 and 256: enough that a handful of
  // writer processes rarely meet, few enough that keys_atomic() stays cheap.
  uint64_t want = max_keys / 4;
  uint32_t s = 8;
  while (s < want && s < 256) s <<= 1;
  return s;
}

uint64_t heap_bytes_for(uint64_t size, uint32_t stripes) {
  Geometry g;
  if (stripes == 0 || stripes > kMaxStripes) return 0;
  if (!compute_geometry(round_up(size, kPage), stripes, &g)) return 0;
  return g.heap_units * kUnit;
}

void Dict::validate_name(const std::string& name) {
  if (name.empty()) throw Error(Errc::InvalidArgument, "segment name must not be empty");
  if (name.find('/') != std::string::npos)
    throw Error(Errc::InvalidArgument, "segment name '" + name + "' must not contain '/'");
  if (name.find('\0') != std::string::npos)
    throw Error(Errc::InvalidArgument, "segment name must not contain NUL characters");
  if (name.size() > kNameMax)
    throw Error(Errc::InvalidArgument, "segment name is " + std::to_string(name.size()) +
                                           " bytes long; the limit is " +
                                           std::to_string(kNameMax));
  if (name == "." || name == "..")
    throw Error(Errc::InvalidArgument, "segment name '" + name + "' is not allowed");
}

void Dict::unlink(const std::string& name) {
  validate_name(name);
  std::string path = "/" + name;
  if (::shm_unlink(path.c_str()) != 0) {
    int e = errno;
    if (e == ENOENT)
      throw Error(Errc::NotFound, "no shared memory segment named '" + name + "'", e);
    throw_errno("cannot unlink shared memory segment '" + name + "'", e);
  }
}

namespace {

// A new segment is built under a private temporary name and only then linked
// to its real name (link(2) fails if the name exists, like O_EXCL), so a name
// never shows a half-built segment: attaching never waits, and a creator
// killed part-way leaves at most its temporary object, which the next
// creation removes (remove_abandoned_temporaries).  This relies on glibc
// keeping POSIX shared memory objects as files in /dev/shm.
constexpr const char* kTempPrefix = ".sbx-init-";

std::string temporary_name() {
  std::random_device rd;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s%d-%08x%08x", kTempPrefix, int(getpid()), rd(), rd());
  return buf;
}

// Unlinks the temporary objects of creators that died before linking them.
// A PID from another PID namespace may look dead here; its creator then
// finds its temporary gone, and starts again (Dict::open).
void remove_abandoned_temporaries() {
  DIR* dir = ::opendir(kShmDir);
  if (!dir) return;
  const size_t plen = std::strlen(kTempPrefix);
  while (struct dirent* e = ::readdir(dir)) {
    if (std::strncmp(e->d_name, kTempPrefix, plen) != 0) continue;
    long pid = std::strtol(e->d_name + plen, nullptr, 10);
    if (pid > 0 && !pid_alive(uint32_t(pid))) ::shm_unlink(("/" + std::string(e->d_name)).c_str());
  }
  ::closedir(dir);
}

// The identity block of an existing segment, read once with pread(2) into
// private memory: validation and the mapping are both built from this copy,
// so a concurrent (or hostile) writer of the header cannot make them differ.
struct HeaderCopy {
  SegmentHeader* h() { return reinterpret_cast<SegmentHeader*>(bytes); }
  alignas(SegmentHeader) unsigned char bytes[sizeof(SegmentHeader)];
};

// Validates the identity block of a segment whose object is st_size bytes.
void check_header(HeaderCopy& copy, uint64_t st_size, const std::string& name) {
  const SegmentHeader* h = copy.h();
  const std::string what = "shared memory segment '" + name + "'";
  const std::string remove_hint =
      "; if nothing uses it, remove it with `sharedbox rm " + name + "` (or delete " +
      kShmDir + "/" + name + ")";
  if (h->h_magic == 0)
    throw Error(Errc::NotReady, what + " is not ready: it was never initialised (its creator "
                                       "died before writing it, or another program made it)" +
                                       remove_hint);
  if (h->h_magic != kMagic)
    throw Error(Errc::Incompatible, what + " is not a sharedbox segment (unknown header)");
  if (h->h_version != kLayoutVersion)
    throw Error(Errc::Incompatible,
                what + " has layout version " + std::to_string(h->h_version) +
                    "; this sharedbox reads version " + std::to_string(kLayoutVersion) +
                    " (open it with the sharedbox release that made it)");
  uint32_t ready = h->h_ready.load(std::memory_order_relaxed);
  if (ready != kReadyMark) {
    if (ready != 0)
      throw Error(Errc::Incompatible, what + " is not a sharedbox segment (bad ready mark)");
    throw Error(Errc::NotReady,
                what + " is not ready: its creator (pid " + std::to_string(h->h_creator_pid) +
                    (pid_alive(h->h_creator_pid) ? ") never finished initialising it"
                                                 : ") died while initialising it") +
                    remove_hint);
  }
  auto bad = [&](const char* field) {
    throw Error(Errc::Incompatible, what + " has an invalid header (" + field + ")");
  };
  if (h->h_segment_bytes != st_size) bad("size differs from the object's size");
  if (h->h_stripes == 0 || h->h_stripes > kMaxStripes || (h->h_stripes & (h->h_stripes - 1)))
    bad("stripe count");
  if (h->h_max_keys == 0 || h->h_max_keys > kMaxKeysLimit) bad("max_keys");
  Geometry g;
  if (!compute_geometry(st_size, h->h_stripes, &g) || g.stripe_off != h->h_stripe_off ||
      g.bitmap_off != h->h_bitmap_off || g.heap_off != h->h_heap_off ||
      g.heap_units != h->h_heap_units || g.pin_off != h->h_pin_off ||
      g.pin_entries != h->h_pin_entries)
    bad("region offsets");
  if (h->h_header_bytes != sizeof(SegmentHeader)) bad("header size");
}

void check_create_options(const OpenOptions& o, uint32_t stripes) {
  if (o.max_keys == 0 || o.max_keys > kMaxKeysLimit)
    throw Error(Errc::InvalidArgument, "max_keys must be between 1 and " +
                                           std::to_string(kMaxKeysLimit) + ", got " +
                                           std::to_string(o.max_keys));
  if (stripes == 0 || stripes > kMaxStripes || (stripes & (stripes - 1)))
    throw Error(Errc::InvalidArgument, "stripes must be a power of two between 1 and " +
                                           std::to_string(kMaxStripes) + ", got " +
                                           std::to_string(stripes));
  if (o.size > kMaxSegmentBytes)
    throw Error(Errc::InvalidArgument, "size " + std::to_string(o.size) +
                                           " is larger than the limit of " +
                                           std::to_string(kMaxSegmentBytes) + " bytes");
}

}  // namespace

std::string shm_full_message(const std::string& name, int e) {
  return "no memory left in " + std::string(kShmDir) + " for segment '" + name + "' (" +
         errno_text(e) + "): the tmpfs mounted there is full (segments reserve memory as they "
         "grow, and other segments or programs have used it up); remove segments nobody uses "
         "(`sharedbox list`, `sharedbox rm`), or enlarge it (Docker: --shm-size; otherwise "
         "`mount -o remount,size=2G /dev/shm` as root)";
}

std::unique_ptr<Dict> Dict::open(const OpenOptions& o, bool* created) {
  validate_name(o.name);
  const std::string path = "/" + o.name;
  const uint32_t stripes = o.stripes ? o.stripes : default_stripes(o.max_keys);
  if (o.create) check_create_options(o, stripes);

  for (;;) {
    if (o.create) {
      uint64_t size = round_up(o.size, kPage);
      Geometry g;
      if (!compute_geometry(size, stripes, &g) || g.heap_units < 64) {
        // The smallest size whose heap holds 64 units (checked, not guessed:
        // the pin table's size depends on the segment's).
        uint64_t minimum = round_up(kPage + uint64_t(stripes) * sizeof(Stripe), kPage);
        while (!compute_geometry(minimum, stripes, &g) || g.heap_units < 64) minimum += kPage;
        throw Error(Errc::InvalidArgument,
                    "size " + std::to_string(o.size) + " is too small for " +
                        std::to_string(stripes) + " stripes; the minimum is " +
                        std::to_string(minimum) + " bytes");
      }
      struct stat existing;
      bool name_taken = ::stat((std::string(kShmDir) + path).c_str(), &existing) == 0;
      if (!name_taken) {
        remove_abandoned_temporaries();
        const std::string temp = temporary_name();
        const std::string temp_path = "/" + temp;
        Fd fd;
        fd.fd = ::shm_open(temp_path.c_str(), O_RDWR | O_CREAT | O_EXCL, o.mode & 0777);
        if (fd.fd < 0) throw_errno("cannot create shared memory segment '" + o.name + "'", errno);
        // The temporary is ours alone until linked: remove it on any failure.
        auto fail = [&](Errc c, const std::string& msg, int e) {
          ::shm_unlink(temp_path.c_str());
          throw Error(c, msg, e);
        };
        struct statvfs vfs;
        if (::statvfs(kShmDir, &vfs) == 0) {
          uint64_t free_bytes = uint64_t(vfs.f_bavail) * vfs.f_frsize;
          if (free_bytes < size)
            fail(Errc::NoSpaceOnDevice,
                 "cannot create a " + std::to_string(size) + "-byte segment: " + kShmDir +
                     " has only " + std::to_string(free_bytes) +
                     " bytes free; pass a smaller size= or enlarge /dev/shm (Docker: "
                     "--shm-size)",
                 ENOSPC);
        }
        if (::fchmod(fd.fd, o.mode & 0777) != 0)  // shm_open applied the umask
          fail(Errc::System, "fchmod: " + errno_text(errno), errno);
        if (::ftruncate(fd.fd, off_t(size)) != 0)
          fail(Errc::System, "cannot size segment '" + o.name + "': " + errno_text(errno),
               errno);
        // The header, stripes and bitmap are reserved now; heap pages when
        // the allocator first reaches them (Dict::reserve_units).
        if (int e = ::posix_fallocate(fd.fd, 0, off_t(g.heap_off)))
          fail(e == ENOSPC ? Errc::NoSpaceOnDevice : Errc::System, shm_full_message(o.name, e),
               e);
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.fd, 0);
        if (p == MAP_FAILED)
          fail(Errc::System, "cannot map segment '" + o.name + "': " + errno_text(errno),
               errno);
        try {
          initialise(static_cast<uint8_t*>(p), size, o, stripes, g);
        } catch (...) {
          ::munmap(p, size);
          ::shm_unlink(temp_path.c_str());
          throw;
        }
        HeaderCopy copy;
        std::memcpy(copy.bytes, p, sizeof copy.bytes);  // still private: no one else sees it
        const std::string dir = kShmDir;
        int linked = ::link((dir + temp_path).c_str(), (dir + path).c_str());
        int link_errno = errno;
        ::shm_unlink(temp_path.c_str());
        if (linked == 0) {
          if (created) *created = true;
          auto d = std::unique_ptr<Dict>(
              new Dict(o.name, static_cast<uint8_t*>(p), size, fd.fd, *copy.h()));
          fd.fd = -1;  // the Dict owns it now
          return d;
        }
        ::munmap(p, size);
        // EEXIST: another creator won the name; ENOENT: our temporary was
        // removed as abandoned (see remove_abandoned_temporaries).  Both: go on.
        if (link_errno == ENOENT) continue;
        if (link_errno != EEXIST)
          throw_errno("cannot publish shared memory segment '" + o.name + "'", link_errno);
      }
    }

    // Attach to an existing segment.
    Fd fd;
    fd.fd = ::shm_open(path.c_str(), O_RDWR, 0);
    if (fd.fd < 0) {
      int e = errno;
      if (e == ENOENT) {
        if (o.create) continue;  // removed between our two looks: create it again
        throw Error(Errc::NotFound,
                    "no shared memory segment named '" + o.name +
                        "' (create=False only attaches to an existing SharedDict)",
                    e);
      }
      throw_errno("cannot open shared memory segment '" + o.name + "'", e);
    }
    struct stat st;
    if (::fstat(fd.fd, &st) != 0) throw_errno("fstat", errno);
    const uint64_t st_size = uint64_t(st.st_size);
    if (st_size == 0)
      throw Error(Errc::NotReady, "shared memory segment '" + o.name +
                                      "' is empty (0 bytes): it was never initialised (its "
                                      "creator died before sizing it, or another program made "
                                      "it); if nothing uses it, remove it with `sharedbox rm " +
                                      o.name + "` (or delete " + kShmDir + path + ")");
    if (st_size < kPage)
      throw Error(Errc::Incompatible, "shared memory segment '" + o.name +
                                          "' is not a sharedbox segment (too small: " +
                                          std::to_string(st_size) + " bytes)");
    HeaderCopy copy;
    ssize_t got = ::pread(fd.fd, copy.bytes, sizeof copy.bytes, 0);
    if (got != ssize_t(sizeof copy.bytes)) throw_errno("cannot read segment '" + o.name + "'", errno);
    check_header(copy, st_size, o.name);
    void* p = ::mmap(nullptr, st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.fd, 0);
    if (p == MAP_FAILED) throw_errno("cannot map segment '" + o.name + "'", errno);
    if (created) *created = false;
    auto d = std::unique_ptr<Dict>(new Dict(o.name, static_cast<uint8_t*>(p), st_size, fd.fd,
                                            *copy.h()));
    fd.fd = -1;
    try {
      d->reclaim_dead_pins();  // views of processes that died are freed without a manual step
    } catch (const Error&) {
      // A corrupt pin table: the operations that need it report it.
    }
    return d;
  }
}

// Built from the validated copy of the header, never from shared memory.
Dict::Dict(std::string name, uint8_t* base, uint64_t size, int fd, const SegmentHeader& h)
    : name_(std::move(name)), base_(base), size_(size), fd_(fd) {
  hdr_ = reinterpret_cast<SegmentHeader*>(base_);
  nstripes_ = h.h_stripes;
  stripes_ = reinterpret_cast<Stripe*>(base_ + h.h_stripe_off);
  hash_seed_ = h.h_hash_seed;
  max_keys_ = h.h_max_keys;
  heap_off_ = h.h_heap_off;
  heap_units_ = h.h_heap_units;
  bitmap_words_ = (heap_units_ + 63) / 64;
  bitmap_ = reinterpret_cast<uint64_t*>(base_ + h.h_bitmap_off);
  pin_base_ = base_ + h.h_pin_off;
  pin_entries_ = h.h_pin_entries;
  pin_stride_ = pin_slot_bytes(pin_entries_);
  pins_ = std::make_unique<ProcessPins>();
  creator_pid_ = h.h_creator_pid;
  mode_ = h.h_mode;
  created_unix_ns_ = h.h_created_unix_ns;
}

Dict::~Dict() {
  release_pin_slot();  // before the mapping goes: it writes the slot
  ::munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace sbx
