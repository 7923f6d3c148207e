// codec.hpp — how a Python value becomes the bytes of a record, and back.
//
// Every value starts with a one-byte tag.  The native tags need no pickle:
//   0 None | 1 False | 2 True | 3 int64 (8 bytes LE) | 4 float64 (8 bytes)
//   5 str (UTF-8) | 6 bytes | 7 pickle (protocol 5) | 8 ndarray
//   9 a dict, list or tuple of None, bool, int64, float, str, bytes and
//     such containers (tree_codec.cpp has the format)
// An ndarray record is
//   [8][flags: bit 0 = Fortran order][ndim u8][descr_len u16][nbytes u64]
//   [shape: ndim x u64][descr: repr of numpy.lib.format.dtype_to_descr]
//   [zero padding up to a 64-byte boundary of the segment][raw data]
// Only exact types take a native tag (a bool subclass, an IntEnum, a str
// subclass or an ndarray subclass is pickled), so every value comes back with
// the type it went in with.
#pragma once

#include <cstdint>

namespace sbx::codec {

enum Tag : uint8_t {
  kNone = 0,
  kFalse = 1,
  kTrue = 2,
  kInt64 = 3,
  kFloat64 = 4,
  kStr = 5,
  kBytes = 6,
  kPickle = 7,
  kNdarray = 8,
  kTree = 9,  // dicts, lists and tuples of JSON-like values (tree_codec.cpp)
};

constexpr uint32_t kArrayMaxDims = 64;
constexpr uint64_t kArrayFixedHeader = 1 + 1 + 1 + 2 + 8;  // tag, flags, ndim, descr_len, nbytes
constexpr uint64_t kArrayAlign = 64;

}  // namespace sbx::codec
