// update.hpp — the read-modify-write decisions behind SharedDict.incr and
// compare_and_set (sbx::UpdateFn).
#pragma once

#include <nanobind/nanobind.h>

#include <cstring>

#include "values.hpp"

namespace sbx::py {
// Read-modify-write decisions (sbx::UpdateFn).  They run under the stripe
// lock with the GIL held, and only compute: the GIL is never waited for
// under a shared lock (rule 1 above), and errors are raised before anything
// is stored.

// A native int64 or float64 value, encoded.
class NumberSource : public sbx::ValueSource {
 public:
  void set_int(int64_t v) {
    bytes_[0] = codec::kInt64;
    std::memcpy(bytes_ + 1, &v, 8);
  }
  void set_float(double v) {
    bytes_[0] = codec::kFloat64;
    std::memcpy(bytes_ + 1, &v, 8);
  }
  uint64_t max_bytes() const override { return 9; }
  uint64_t write(uint8_t* dst, uint64_t) override {
    std::memcpy(dst, bytes_, 9);
    return 9;
  }

 private:
  uint8_t bytes_[9] = {};
};

// incr(): the stored number (0 if absent) plus delta.  int + int stays an
// int64 (OverflowError past it); a float on either side gives a float.
class IncrDecision : public sbx::UpdateFn {
 public:
  IncrDecision(bool delta_is_int, int64_t di, double df) : di_(di), df_(df), int_(delta_is_int) {}
  sbx::ValueSource* decide(const uint8_t* v, uint64_t n, bool present) override {
    bool cur_int = true;
    int64_t ci = 0;
    double cf = 0;
    if (present) {
      if (n == 9 && v[0] == codec::kInt64) {
        std::memcpy(&ci, v + 1, 8);
      } else if (n == 9 && v[0] == codec::kFloat64) {
        cur_int = false;
        std::memcpy(&cf, v + 1, 8);
      } else {
        throw nb::type_error("incr(): the stored value is not an int or a float");
      }
    }
    if (cur_int && int_) {
      if (__builtin_add_overflow(ci, di_, &ri_)) {
        PyErr_SetString(PyExc_OverflowError,
                        "incr() would leave the 64-bit int range; the dict is unchanged");
        throw nb::python_error();
      }
      result_is_int_ = true;
      src_.set_int(ri_);
    } else {
      rf_ = (cur_int ? double(ci) : cf) + (int_ ? double(di_) : df_);
      result_is_int_ = false;
      src_.set_float(rf_);
    }
    return &src_;
  }
  nb::object result() const {
    return result_is_int_ ? nb::steal(PyLong_FromLongLong(ri_)) : nb::steal(PyFloat_FromDouble(rf_));
  }

 private:
  int64_t di_;
  double df_;
  bool int_;
  bool result_is_int_ = true;
  int64_t ri_ = 0;
  double rf_ = 0;
  NumberSource src_;
};

// Whether a stored value (padded for its place in the segment) is the value
// whose canonical encoding is `e` (see encode_value): the same tag and bytes;
// for an array the same header and data, whatever the padding between them.
inline bool same_encoded_value(const uint8_t* v, uint64_t n, const uint8_t* e, uint64_t en) {
  if (n == 0 || en == 0 || v[0] != e[0]) return false;
  if (v[0] != codec::kNdarray) return n == en && std::memcmp(v, e, n) == 0;
  ArrayHeader he;
  if (!parse_array(e, en, 0, &he)) return false;
  const uint64_t head = head_len_of(he);
  if (n < head + he.nbytes || std::memcmp(v, e, head) != 0) return false;
  return std::memcmp(v + n - he.nbytes, e + en - he.nbytes, he.nbytes) == 0;
}

// compare_and_set(): store `src` if the key holds the value encoded as
// `expected` (nullptr: if the key is absent).
class CompareDecision : public sbx::UpdateFn {
 public:
  CompareDecision(const nb::bytes* expected, sbx::ValueSource& src)
      : expected_(expected), src_(src) {}
  sbx::ValueSource* decide(const uint8_t* v, uint64_t n, bool present) override {
    if (!expected_) return present ? nullptr : &src_;
    if (!present) return nullptr;
    BytesIn e(*expected_);
    return same_encoded_value(v, n, e.p, e.n) ? &src_ : nullptr;
  }

 private:
  const nb::bytes* expected_;
  sbx::ValueSource& src_;
};

}  // namespace sbx::py
