// inspect.hpp — read-only views of segments and values for the command-line
// tool (sharedbox._cli) and for telling a handle's segment from a newer one.
#pragma once

#include <nanobind/nanobind.h>

#include <string>

#include "values.hpp"

namespace sbx::py {

// The identity block of a segment from the first bytes of its file, or None.
nb::object peek_header(nb::bytes data);
// "current", "missing" or "replaced": what `name` refers to now, compared
// with the segment of this identity.
const char* name_state(const std::string& name, uint64_t created_ns, uint64_t seed);


// Keeps only what describing a value needs: its stored length and, for an
// array, its header.  Nothing is decoded, so a pickled value is never loaded.
class PeekSink : public sbx::ValueSink {
 public:
  void take(const uint8_t* v, uint64_t n, uint64_t segment_off, bool) override {
    // The longest array header: fixed part, 64 dimensions, a 64 KiB descr.
    constexpr uint64_t kMaxHead =
        codec::kArrayFixedHeader + codec::kArrayMaxDims * 8 + 0xFFFF;
    len_ = n;
    segment_off_ = segment_off;
    head_.assign(reinterpret_cast<const char*>(v), size_t(std::min(n, kMaxHead)));
  }
  void reset() override {
    len_ = 0;
    head_.clear();
  }

  // (type name, stored bytes, dtype descr or None, shape or None)
  nb::tuple describe() const {
    if (len_ == 0) throw_corrupt_value();
    const auto* v = reinterpret_cast<const uint8_t*>(head_.data());
    const char* type = nullptr;
    switch (v[0]) {
      case codec::kNone: type = "None"; break;
      case codec::kFalse:
      case codec::kTrue: type = "bool"; break;
      case codec::kInt64: type = "int"; break;
      case codec::kFloat64: type = "float"; break;
      case codec::kStr: type = "str"; break;
      case codec::kBytes: type = "bytes"; break;
      case codec::kPickle: type = "pickle"; break;
      case codec::kTree:
        type = len_ < 2 ? "?" : v[1] == 'd' ? "dict" : v[1] == 'l' ? "list" : "tuple";
        break;
      case codec::kNdarray: {
        // parse_array reads only the header, which head_ holds whole; len_
        // is the full value length it checks the data size against.
        ArrayHeader h;
        if (!parse_array(v, len_, segment_off_, &h)) throw_corrupt_value();
        nb::object shape = nb::steal(PyTuple_New(h.ndim));
        for (uint32_t i = 0; i < h.ndim; ++i)
          PyTuple_SET_ITEM(shape.ptr(), i, PyLong_FromUnsignedLongLong(h.shape[i]));
        return nb::make_tuple("ndarray", len_, nb::bytes(h.descr, h.descr_len), shape);
      }
      default:
        throw_corrupt_value();
    }
    return nb::make_tuple(type, len_, nb::none(), nb::none());
  }

 private:
  std::string head_;
  uint64_t len_ = 0;
  uint64_t segment_off_ = 0;
};


}  // namespace sbx::py
