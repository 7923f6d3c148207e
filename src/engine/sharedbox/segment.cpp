// segment.cpp — creating, attaching to and removing a segment, and laying out
// a new one.  Everything here runs before the segment is shared (creation) or
// reads only the identity block that is immutable once h_ready is set.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "sharedbox/dict.hpp"
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
  uint64_t stripe_off, bitmap_off, heap_off, heap_units, bitmap_words;
};

bool compute_geometry(uint64_t size, uint32_t stripes, Geometry* g) {
  g->stripe_off = kPage;
  uint64_t after_stripes = round_up(g->stripe_off + uint64_t(stripes) * sizeof(Stripe), kPage);
  if (after_stripes >= size) return false;
  g->bitmap_off = after_stripes;
  // One bit of bitmap per unit of heap: heap_units ~= rest * 8 / (8 * 64 + 1).
  uint64_t rest = size - after_stripes;
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
  std::random_device rd;
  h->h_hash_seed = (uint64_t(rd()) << 32) ^ rd() ^ h->h_created_unix_ns;
  init_robust_mutex(&h->h_alloc.a_mutex);
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

// Validates the identity block of an initialised segment of st_size bytes.
void check_header(const SegmentHeader* h, uint64_t st_size, const std::string& name) {
  if (h->h_magic != kMagic)
    throw Error(Errc::Incompatible, "shared memory segment '" + name +
                                        "' is not a sharedbox segment (unknown header)");
  if (h->h_version != kLayoutVersion)
    throw Error(Errc::Incompatible,
                "shared memory segment '" + name + "' has layout version " +
                    std::to_string(h->h_version) + "; this sharedbox reads version " +
                    std::to_string(kLayoutVersion) + " (upgrade sharedbox to open it)");
  auto bad = [&](const char* what) {
    throw Error(Errc::Incompatible, "shared memory segment '" + name +
                                        "' has an invalid header (" + what + ")");
  };
  if (h->h_segment_bytes != st_size) bad("size differs from the object's size");
  if (h->h_stripes == 0 || h->h_stripes > kMaxStripes || (h->h_stripes & (h->h_stripes - 1)))
    bad("stripe count");
  if (h->h_max_keys == 0 || h->h_max_keys > kMaxKeysLimit) bad("max_keys");
  Geometry g;
  if (!compute_geometry(st_size, h->h_stripes, &g) || g.stripe_off != h->h_stripe_off ||
      g.bitmap_off != h->h_bitmap_off || g.heap_off != h->h_heap_off ||
      g.heap_units != h->h_heap_units)
    bad("region offsets");
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

std::unique_ptr<Dict> Dict::open(const OpenOptions& o, bool* created) {
  validate_name(o.name);
  const std::string path = "/" + o.name;
  uint32_t stripes = o.stripes ? o.stripes : default_stripes(o.max_keys);

  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::microseconds(int64_t(o.attach_timeout_s * 1e6));
  for (;;) {
    if (o.create) {
      // Validate the creation parameters before touching the name.
      if (o.max_keys == 0 || o.max_keys > kMaxKeysLimit)
        throw Error(Errc::InvalidArgument, "max_keys must be between 1 and " +
                                               std::to_string(kMaxKeysLimit) + ", got " +
                                               std::to_string(o.max_keys));
      if (stripes == 0 || stripes > kMaxStripes || (stripes & (stripes - 1)))
        throw Error(Errc::InvalidArgument,
                    "stripes must be a power of two between 1 and " +
                        std::to_string(kMaxStripes) + ", got " + std::to_string(stripes));
      if (o.size > kMaxSegmentBytes)
        throw Error(Errc::InvalidArgument, "size " + std::to_string(o.size) +
                                               " is larger than the limit of " +
                                               std::to_string(kMaxSegmentBytes) + " bytes");
      uint64_t size = round_up(o.size, kPage);
      Geometry g;
      if (!compute_geometry(size, stripes, &g) || g.heap_units < 64) {
        uint64_t minimum = round_up(kPage + uint64_t(stripes) * sizeof(Stripe), kPage) + 2 * kPage;
        throw Error(Errc::InvalidArgument,
                    "size " + std::to_string(o.size) + " is too small for " +
                        std::to_string(stripes) + " stripes; the minimum is " +
                        std::to_string(minimum) + " bytes");
      }

      Fd fd;
      fd.fd = ::shm_open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, o.mode & 0777);
      if (fd.fd >= 0) {
        // We own the name: build the segment, removing it on any failure so
        // that no half-built segment is left behind.
        auto fail = [&](Errc c, const std::string& msg, int e) {
          ::shm_unlink(path.c_str());
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
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.fd, 0);
        if (p == MAP_FAILED)
          fail(Errc::System, "cannot map segment '" + o.name + "': " + errno_text(errno),
               errno);
        try {
          initialise(static_cast<uint8_t*>(p), size, o, stripes, g);
        } catch (...) {
          ::munmap(p, size);
          ::shm_unlink(path.c_str());
          throw;
        }
        if (created) *created = true;
        return std::unique_ptr<Dict>(new Dict(o.name, static_cast<uint8_t*>(p), size));
      }
      if (errno != EEXIST) throw_errno("cannot create shared memory segment '" + o.name + "'", errno);
    }

    // Attach to an existing segment.
    Fd fd;
    fd.fd = ::shm_open(path.c_str(), O_RDWR, 0);
    if (fd.fd < 0) {
      int e = errno;
      if (e == ENOENT) {
        if (o.create) continue;  // removed between our two opens: create it again
        throw Error(Errc::NotFound,
                    "no shared memory segment named '" + o.name +
                        "' (create=False only attaches to an existing SharedDict)",
                    e);
      }
      throw_errno("cannot open shared memory segment '" + o.name + "'", e);
    }
    // Wait for the creator to size and initialise it.
    for (;;) {
      struct stat st;
      if (::fstat(fd.fd, &st) != 0) throw_errno("fstat", errno);
      uint64_t st_size = uint64_t(st.st_size);
      bool timed_out = std::chrono::steady_clock::now() > deadline;
      if (st_size >= kPage) {
        void* hp = ::mmap(nullptr, kPage, PROT_READ, MAP_SHARED, fd.fd, 0);
        if (hp == MAP_FAILED) throw_errno("cannot map segment '" + o.name + "'", errno);
        auto* h = static_cast<const SegmentHeader*>(hp);
        uint64_t magic = h->h_magic;
        uint32_t ready = h->h_ready.load(std::memory_order_acquire);
        uint32_t creator = h->h_creator_pid;
        ::munmap(hp, kPage);
        if (magic != 0 && magic != kMagic) {
          throw Error(Errc::Incompatible, "shared memory segment '" + o.name +
                                              "' is not a sharedbox segment (unknown header)");
        }
        if (ready == kReadyMark) {
          void* p = ::mmap(nullptr, st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.fd, 0);
          if (p == MAP_FAILED) throw_errno("cannot map segment '" + o.name + "'", errno);
          try {
            check_header(static_cast<const SegmentHeader*>(p), st_size, o.name);
          } catch (...) {
            ::munmap(p, st_size);
            throw;
          }
          if (created) *created = false;
          return std::unique_ptr<Dict>(new Dict(o.name, static_cast<uint8_t*>(p), st_size));
        }
        if (ready != 0)
          throw Error(Errc::Incompatible, "shared memory segment '" + o.name +
                                              "' is not a sharedbox segment (bad ready mark)");
        if (magic == kMagic && !pid_alive(creator))
          throw Error(Errc::NotReady, "shared memory segment '" + o.name +
                                          "' was never finished: its creator (pid " +
                                          std::to_string(creator) +
                                          ") died while initialising it; unlink it and retry");
      }
      if (timed_out) {
        if (st_size > 0 && st_size < kPage)
          throw Error(Errc::Incompatible, "shared memory segment '" + o.name +
                                              "' is not a sharedbox segment (too small)");
        throw Error(Errc::NotReady, "shared memory segment '" + o.name +
                                        "' was not initialised within the attach timeout; it "
                                        "may be foreign or abandoned");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}

Dict::Dict(std::string name, uint8_t* base, uint64_t size)
    : name_(std::move(name)), base_(base), size_(size) {
  hdr_ = reinterpret_cast<SegmentHeader*>(base_);
  nstripes_ = hdr_->h_stripes;
  stripes_ = reinterpret_cast<Stripe*>(base_ + hdr_->h_stripe_off);
  hash_seed_ = hdr_->h_hash_seed;
  max_keys_ = hdr_->h_max_keys;
  heap_off_ = hdr_->h_heap_off;
  heap_units_ = hdr_->h_heap_units;
  bitmap_words_ = (heap_units_ + 63) / 64;
  bitmap_ = reinterpret_cast<uint64_t*>(base_ + hdr_->h_bitmap_off);
}

Dict::~Dict() { ::munmap(base_, size_); }

}  // namespace sbx
