// inspect.cpp — see inspect.hpp.
#include "inspect.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>

namespace sbx::py {

// The identity block of a segment, from the first bytes of its file (read with
// read(2), not mapped): None unless they start with kMagic.  For another
// layout version only the version is returned, since the rest of the header
// may mean something else there.  A snapshot: nothing is locked, and the
// fields are only trustworthy once `ready` is true.
nb::object peek_header(nb::bytes data) {
  const auto* p = reinterpret_cast<const uint8_t*>(data.c_str());
  size_t n = data.size();
  auto field = [&](size_t off, auto zero) {
    decltype(zero) v;
    std::memcpy(&v, p + off, sizeof v);
    return v;
  };
  using H = sbx::SegmentHeader;
  if (n < offsetof(H, h_version) + 4 || field(offsetof(H, h_magic), uint64_t()) != sbx::kMagic)
    return nb::none();
  nb::dict r;
  uint32_t version = field(offsetof(H, h_version), uint32_t());
  r["version"] = version;
  if (version != sbx::kLayoutVersion || n < sizeof(H)) return r;
  r["ready"] = field(offsetof(H, h_ready), uint32_t()) == sbx::kReadyMark;
  r["creator_pid"] = field(offsetof(H, h_creator_pid), uint32_t());
  r["created_unix_ns"] = field(offsetof(H, h_created_unix_ns), uint64_t());
  r["segment_bytes"] = field(offsetof(H, h_segment_bytes), uint64_t());
  r["max_keys"] = field(offsetof(H, h_max_keys), uint64_t());
  r["stripes"] = field(offsetof(H, h_stripes), uint32_t());
  r["mode"] = field(offsetof(H, h_mode), uint32_t());
  r["heap_bytes"] = field(offsetof(H, h_heap_units), uint64_t()) * sbx::kUnit;
  // The allocator's own count (what get_stats() reads under its lock).
  r["used_bytes"] =
      field(offsetof(H, h_alloc) + offsetof(sbx::AllocState, a_used_units), uint64_t()) *
      sbx::kUnit;
  return r;
}

// What the name `name` refers to now, compared with the segment whose header
// holds (created_ns, seed): "current" (that segment), "missing" (nothing), or
// "replaced" (another segment, or something that is not ours to read).  The
// creation stamp and the random hash seed are written once, before the
// segment is ready, so they tell two segments of one name apart.
const char* name_state(const std::string& name, uint64_t created_ns, uint64_t seed) {
  sbx::Dict::validate_name(name);
  const std::string path = "/" + name;
  int fd = ::shm_open(path.c_str(), O_RDONLY, 0);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT) return "missing";
    // Our own segment is readable by us (we opened it read-write); one we
    // may not read belongs to someone else.
    if (e == EACCES || e == EPERM) return "replaced";
    throw sbx::Error(sbx::Errc::System,
                     "cannot open shared memory segment '" + name + "': " + std::strerror(e), e);
  }
  using H = sbx::SegmentHeader;
  unsigned char buf[sizeof(H)];
  ssize_t n = ::pread(fd, buf, sizeof buf, 0);
  ::close(fd);
  if (n != ssize_t(sizeof buf)) return "replaced";
  auto field = [&](size_t off, auto zero) {
    decltype(zero) v;
    std::memcpy(&v, buf + off, sizeof v);
    return v;
  };
  bool same = field(offsetof(H, h_magic), uint64_t()) == sbx::kMagic &&
              field(offsetof(H, h_version), uint32_t()) == sbx::kLayoutVersion &&
              field(offsetof(H, h_created_unix_ns), uint64_t()) == created_ns &&
              field(offsetof(H, h_hash_seed), uint64_t()) == seed;
  return same ? "current" : "replaced";
}

}  // namespace sbx::py
