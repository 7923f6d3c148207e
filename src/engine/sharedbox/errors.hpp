// errors.hpp — the one exception type the engine throws.  The code says what
// happened; the binding maps each code to a Python exception class.
#pragma once

#include <stdexcept>
#include <string>

namespace sbx {

enum class Errc {
  InvalidArgument,   // a bad name, size, max_keys, stripes or key
  NotFound,          // no segment of that name
  PermissionDenied,  // the segment exists but we may not open it
  NoSpaceOnDevice,   // /dev/shm has less free space than the requested size
  Incompatible,      // foreign segment, newer layout, or a header that fails validation
  NotReady,          // a segment whose creator never finished initialising it
  SegmentFull,       // no free block large enough for the record
  ValueTooLarge,     // the record can never fit in this segment
  TooManyKeys,       // max_keys keys are present
  Corrupt,           // shared state failed a bounds or consistency check
  System,            // an OS call failed (errno in sys_errno)
  TooManyLocks,      // every named-lock slot of the segment is taken
  LockMisuse,        // release() of a named lock this thread does not hold, or a second acquire
  TooManyViews,      // this process holds as many pins as its slot has, or every slot is taken
};

class Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message, int sys_errno = 0)
      : std::runtime_error(message), code_(code), sys_errno_(sys_errno) {}
  Errc code() const noexcept { return code_; }
  int sys_errno() const noexcept { return sys_errno_; }

 private:
  Errc code_;
  int sys_errno_;
};

}  // namespace sbx
