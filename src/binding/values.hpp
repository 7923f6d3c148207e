// values.hpp — Python values as the bytes of a record (codec.hpp has the
// format): Encoded writes one (a ValueSource), Sink reads one back (a
// ValueSink); and the same bytes outside a segment, in canonical form, for
// other backends and byte-for-byte copies.
#pragma once

#include <nanobind/nanobind.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "common.hpp"
#include "sharedbox/dict.hpp"
#include "tree_codec.hpp"

namespace sbx::py {

void copy_bytes_without_gil(uint8_t* dst, const uint8_t* src, uint64_t n);

// Copies n bytes; a copy of kReleaseGilBytes or more runs with the GIL
// released when may_release_gil.  Inline: most values are small, and a read
// of one should not pay a call for it.
inline void copy_bytes(uint8_t* dst, const uint8_t* src, uint64_t n, bool may_release_gil) {
  if (n >= kReleaseGilBytes && may_release_gil)
    copy_bytes_without_gil(dst, src, n);
  else if (n)
    std::memcpy(dst, src, n);
}

// An array's head ends at dst + pos; zero-pads up to the 64-byte boundary of
// the segment (dst is at segment offset dst_off) where its data starts, and
// returns the position of the data.
inline uint64_t pad_to_array_data(uint8_t* dst, uint64_t dst_off, uint64_t pos) {
  const uint64_t pad =
      (codec::kArrayAlign - (dst_off + pos) % codec::kArrayAlign) % codec::kArrayAlign;
  std::memset(dst + pos, 0, pad);
  return pos + pad;
}
// The head of an ndarray value (codec.hpp), everything before the padding.
// shape: a tuple of ints; ValueError for too many dimensions or too long a descr.
std::string array_head(const char* descr, size_t descr_len, nb::handle shape, bool fortran,
                       uint64_t nbytes);


class Encoded : public sbx::ValueSource {
 public:
  explicit Encoded(bool allow_pickle) : allow_pickle_(allow_pickle) {}
  uint64_t max_bytes() const override {
    return head_len() + payload_len_ + (align_ ? codec::kArrayAlign - 1 : 0);
  }
  uint64_t write(uint8_t* dst, uint64_t dst_off) override {
    const uint64_t head = head_len();
    std::memcpy(dst, long_head_ ? head_.data() : short_head_, head);
    const uint64_t pos = align_ ? pad_to_array_data(dst, dst_off, head) : head;
    if (payload_len_) std::memcpy(dst + pos, payload_, payload_len_);
    return pos + payload_len_;
  }
  uint64_t payload_len() const { return payload_len_; }

  void encode(PyObject* v) {
    PyTypeObject* t = Py_TYPE(v);
    if (v == Py_None) return set_tag(codec::kNone);
    if (t == &PyBool_Type) return set_tag(v == Py_True ? codec::kTrue : codec::kFalse);
    if (t == &PyLong_Type) {
      int overflow = 0;
      long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
      if (!overflow && !(x == -1 && PyErr_Occurred())) {
        return set_tag(codec::kInt64, &x);
      }
      PyErr_Clear();
      return pickled(v);
    }
    if (t == &PyFloat_Type) {
      double x = PyFloat_AS_DOUBLE(v);
      return set_tag(codec::kFloat64, &x);
    }
    if (t == &PyUnicode_Type) {
      Py_ssize_t n;
      const char* p = utf8_of(v, &n);
      if (!p) {  // lone surrogates: pickle keeps them
        PyErr_Clear();
        return pickled(v);
      }
      // No reference of our own to a str or bytes: the caller holds v for
      // the whole call (also while the GIL is released for a large
      // payload), and neither type ever changes its bytes.
      set_tag(codec::kStr);
      payload_ = reinterpret_cast<const uint8_t*>(p);
      payload_len_ = uint64_t(n);
      return;
    }
    if (t == &PyBytes_Type) {
      set_tag(codec::kBytes);
      payload_ = reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(v));
      payload_len_ = uint64_t(PyBytes_GET_SIZE(v));
      return;
    }
    if (is_ndarray(t) && array(v)) return;
    if ((t == &PyDict_Type || t == &PyList_Type || t == &PyTuple_Type) && encode_tree(v, head_)) {
      long_head_ = true;
      return;
    }
    // A memoryview is a window on someone else's memory, not a value of its
    // own (pickle refuses it): store the bytes it shows; they read back as bytes.
    if (PyMemoryView_Check(v)) return buffer_bytes(v);
    pickled(v);
  }

 private:
  static bool is_ndarray(PyTypeObject* t) {
    if (!g.ndarray_type) {
      PyObject* modules = PyImport_GetModuleDict();
      PyObject* np = PyDict_GetItemString(modules, "numpy");  // borrowed
      if (!np) return false;
      PyObject* nd = PyObject_GetAttrString(np, "ndarray");
      if (!nd) {
        PyErr_Clear();
        return false;
      }
      g.ndarray_type = nd;  // kept for the life of the process
    }
    return reinterpret_cast<PyObject*>(t) == g.ndarray_type;
  }

  // A head of the tag, and for a number its 8 bytes, stays in short_head_:
  // std::string's out-of-line push_back and append cost ~60 instructions a
  // put of a small value.
  void set_tag(char tag, const void* number = nullptr) {
    short_head_[0] = tag;
    short_len_ = 1;
    if (number) {
      std::memcpy(short_head_ + 1, number, 8);
      short_len_ = 9;
    }
  }
  uint64_t head_len() const { return long_head_ ? head_.size() : short_len_; }

  // Stores the contents of a buffer-protocol object (C order) as bytes.
  void buffer_bytes(PyObject* v) {
    // A C-contiguous view of v, copied only if v's memory is not C-contiguous.
    nb::object view = nb::steal(PyMemoryView_GetContiguous(v, PyBUF_READ, 'C'));
    if (!view.is_valid()) throw nb::python_error();  // e.g. a released memoryview
    const Py_buffer* b = PyMemoryView_GET_BUFFER(view.ptr());
    set_tag(codec::kBytes);
    payload_ = static_cast<const uint8_t*>(b->buf);
    payload_len_ = uint64_t(b->len);
    keep_ = std::move(view);
  }

  void pickled(PyObject* v) {
    if (!allow_pickle_)
      throw_pickle_refused(
          "this SharedDict was opened with allow_pickle=False: only None, bool, int64, "
          "float, str, bytes, memoryview, NumPy arrays (not of object dtype), and dicts, "
          "lists and tuples of None, bool, int64, float, str and bytes can be stored");
    PyObject* args[] = {v, g.protocol};
    nb::object data = nb::steal(PyObject_Vectorcall(g.c_dumps, args, 2, nullptr));
    if (!data.is_valid()) {  // let the codec's helper raise its clear ValueError
      PyErr_Clear();
      data = nb::steal(PyObject_CallOneArg(g.pickle_dumps, v));
    }
    if (!data.is_valid()) {
      // A buffer that pickle cannot carry (mmap, ...): store its bytes, as
      // for a memoryview.  Picklable buffers (bytearray, array.array) keep
      // their type through pickle.
      if (PyObject_CheckBuffer(v)) {
        PyErr_Clear();
        return buffer_bytes(v);
      }
      throw nb::python_error();
    }
    if (!PyBytes_Check(data.ptr())) throw std::runtime_error("pickle helper must return bytes");
    set_tag(codec::kPickle);
    payload_ = reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(data.ptr()));
    payload_len_ = uint64_t(PyBytes_GET_SIZE(data.ptr()));
    keep_ = std::move(data);
  }

  // Returns false when the array must be pickled (object dtype).
  bool array(PyObject* v) {
    nb::object parts = nb::steal(PyObject_CallOneArg(g.array_header, v));
    if (!parts.is_valid()) throw nb::python_error();
    if (parts.is_none()) return false;
    // (descr: bytes, shape: tuple, fortran: bool, data_ptr: int, nbytes: int, keepalive)
    nb::tuple t = nb::cast<nb::tuple>(parts);
    nb::bytes descr = nb::cast<nb::bytes>(t[0]);
    bool fortran = nb::cast<bool>(t[2]);
    uintptr_t ptr = nb::cast<uintptr_t>(t[3]);
    uint64_t nbytes = nb::cast<uint64_t>(t[4]);
    head_ = array_head(descr.c_str(), descr.size(), t[1], fortran, nbytes);
    long_head_ = true;
    payload_ = reinterpret_cast<const uint8_t*>(ptr);
    payload_len_ = nbytes;
    align_ = true;
    keep_ = std::move(parts);
    return true;
  }

  bool allow_pickle_;
  // The bytes before the payload: short_head_ (tag, number) unless
  // long_head_, for a tree encoding or an array header in head_.
  char short_head_[9];
  uint8_t short_len_ = 0;
  bool long_head_ = false;
  std::string head_;
  const uint8_t* payload_ = nullptr;
  uint64_t payload_len_ = 0;
  bool align_ = false;
  nb::object keep_;
};

// Parsed ndarray header (bounds-checked against the value length).
struct ArrayHeader {
  bool fortran;
  uint32_t ndim;
  uint64_t nbytes;
  uint64_t shape[codec::kArrayMaxDims];
  const char* descr;
  uint16_t descr_len;
  uint64_t data_at;  // offset of the data from the start of the value
};

bool parse_array(const uint8_t* v, uint64_t n, uint64_t segment_off, ArrayHeader* h);
// Builds a new ndarray for `h` and copies `data` into it.
nb::object make_array(const ArrayHeader& h, const uint8_t* data, bool may_release_gil);
// The header bytes of an array value (everything before the padding).
uint64_t head_len_of(const ArrayHeader& h);
// Checks that `v` is one well-formed canonical encoded value (ValueError if
// not; PickleRefusedError for a pickle when pickles are refused).
void validate_encoded(const uint8_t* v, uint64_t n, bool allow_pickle);
nb::bytes encode_value(nb::handle value, bool allow_pickle);
nb::object decode_value(const nb::bytes& data, bool allow_pickle);




class Sink : public sbx::ValueSink {
 public:
  explicit Sink(bool allow_pickle) : allow_pickle_(allow_pickle) {}
  ~Sink() override { std::free(heap_); }

  void take(const uint8_t* v, uint64_t n, uint64_t segment_off, bool under_lock) override {
    if (n == 0) throw_corrupt_value();
    segment_off_ = segment_off;
    tag_ = v[0];
    stored_len_ = n;
    if (!under_lock) {
      // Lock-free read: build large objects directly (one copy out).
      if (v[0] == codec::kNdarray) {
        ArrayHeader h;
        if (!parse_array(v, n, segment_off, &h)) throw_corrupt_value();
        direct_ = make_array(h, v + h.data_at, true);
        return;
      }
      if ((v[0] == codec::kBytes && n > kInlineBytes) || v[0] == codec::kPickle) {
        // A pickle is copied straight into a bytes object too: see unpickle().
        direct_ = nb::steal(PyBytes_FromStringAndSize(nullptr, Py_ssize_t(n - 1)));
        if (!direct_.is_valid()) throw nb::python_error();
        copy_bytes(reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(direct_.ptr())), v + 1, n - 1, true);
        direct_pickle_ = v[0] == codec::kPickle;
        return;
      }
    }
    uint8_t* dst = buffer(n);
    copy_bytes(dst, v, n, !under_lock);
    len_ = n;
  }

  // The tag and length of the value taken (valid after take()).
  uint8_t tag() const { return tag_; }
  uint64_t stored_len() const { return stored_len_; }

  void reset() override {
    direct_ = nb::object();
    direct_pickle_ = false;
    len_ = 0;
  }

  nb::object decode() {
    if (direct_.is_valid()) {
      nb::object made = std::move(direct_);
      return direct_pickle_ ? unpickle(made) : made;
    }
    const uint8_t* v = data();
    uint64_t n = len_;
    if (n == 0) throw_corrupt_value();
    switch (v[0]) {
      case codec::kNone:
        return nb::none();
      case codec::kFalse:
        return nb::borrow(Py_False);
      case codec::kTrue:
        return nb::borrow(Py_True);
      case codec::kInt64: {
        if (n != 9) throw_corrupt_value();
        long long x;
        std::memcpy(&x, v + 1, 8);
        return nb::steal(PyLong_FromLongLong(x));
      }
      case codec::kFloat64: {
        if (n != 9) throw_corrupt_value();
        double x;
        std::memcpy(&x, v + 1, 8);
        return nb::steal(PyFloat_FromDouble(x));
      }
      case codec::kStr: {
        PyObject* s = str_from_utf8(reinterpret_cast<const char*>(v + 1), Py_ssize_t(n - 1));
        if (!s) throw nb::python_error();
        return nb::steal(s);
      }
      case codec::kBytes:
        return nb::steal(PyBytes_FromStringAndSize(reinterpret_cast<const char*>(v + 1), Py_ssize_t(n - 1)));
      case codec::kPickle: {
        nb::object data = nb::steal(
            PyBytes_FromStringAndSize(reinterpret_cast<const char*>(v + 1), Py_ssize_t(n - 1)));
        if (!data.is_valid()) throw nb::python_error();
        return unpickle(data);
      }
      case codec::kNdarray: {
        ArrayHeader h;
        if (!parse_array(v, n, segment_off_, &h)) throw_corrupt_value();
        return make_array(h, v + h.data_at, true);
      }
      case codec::kTree:
        return decode_tree(v + 1, n - 1);
      default:
        throw_corrupt_value();
    }
  }

 private:
  // Unpickles `data`, a bytes object.  Pickle is never handed a view of this
  // sink's private buffer: when unpickling fails, the traceback keeps the
  // argument alive after the sink (and its buffer) are gone.
  nb::object unpickle(const nb::object& data) {
    if (!allow_pickle_)
      throw_pickle_refused(
          "refusing to unpickle a stored value: this SharedDict was opened with "
          "allow_pickle=False (unpickling data from shared memory can run code)");
    PyObject* obj = PyObject_CallOneArg(g.c_loads, data.ptr());
    if (!obj) {  // let the codec's helper raise its clear ValueError
      PyErr_Clear();
      obj = PyObject_CallOneArg(g.pickle_loads, data.ptr());
    }
    if (!obj) throw nb::python_error();
    return nb::steal(obj);
  }

  uint8_t* buffer(uint64_t n) {
    if (n <= kInlineBytes) return inline_;
    if (n > heap_cap_) {
      void* p = std::realloc(heap_, n);
      if (!p) throw std::bad_alloc();
      heap_ = static_cast<uint8_t*>(p);
      heap_cap_ = n;
    }
    return heap_;
  }
  const uint8_t* data() const { return len_ <= kInlineBytes ? inline_ : heap_; }

  uint8_t inline_[kInlineBytes];
  uint8_t* heap_ = nullptr;
  uint64_t heap_cap_ = 0;
  uint64_t len_ = 0;
  uint64_t segment_off_ = 0;
  bool allow_pickle_;
  nb::object direct_;
  bool direct_pickle_ = false;  // direct_ holds pickle bytes still to be loaded
  uint8_t tag_ = 0;
  uint64_t stored_len_ = 0;
};

// ---------------------------------------------------------------------------
// The codec as bytes, for backends that store values elsewhere (RedisDict)
// and for copying values between backends without decoding them.
//
// An encoded value outside a segment is in canonical form: an ndarray's
// padding is computed as if the value started at offset 0 (so its data sits
// at the first 64-byte boundary after the header).  Inside a segment the
// padding depends on where the record landed; raw_get/raw_put convert
// between the two, so the same value has the same canonical bytes whichever
// backend holds it.



// Buffer protocol view of a bytes object (bytes only: immutable, so a copy
// made without the GIL cannot see it change or move).
struct BytesIn {
  const uint8_t* p;
  uint64_t n;
  explicit BytesIn(const nb::bytes& b)
      : p(reinterpret_cast<const uint8_t*>(b.c_str())), n(uint64_t(b.size())) {}
};



// Copies one value out of the segment as it is stored (no decoding; a
// pickle is never loaded).  take() may run under the stripe lock, so it
// only copies.
class RawSink : public sbx::ValueSink {
 public:
  void take(const uint8_t* v, uint64_t n, uint64_t segment_off, bool) override {
    bytes_.assign(reinterpret_cast<const char*>(v), size_t(n));
    segment_off_ = segment_off;
  }
  void reset() override { bytes_.clear(); }

  // The value in canonical form (an array re-padded as if at offset 0).
  nb::bytes canonical() const {
    const auto* v = reinterpret_cast<const uint8_t*>(bytes_.data());
    uint64_t n = bytes_.size();
    if (n == 0) throw_corrupt_value();
    if (v[0] != codec::kNdarray) return nb::bytes(bytes_.data(), bytes_.size());
    ArrayHeader h;
    if (!parse_array(v, n, segment_off_, &h)) throw_corrupt_value();
    uint64_t head = head_len_of(h);
    uint64_t pad = (codec::kArrayAlign - head % codec::kArrayAlign) % codec::kArrayAlign;
    std::string out;
    out.reserve(size_t(head + pad + h.nbytes));
    out.append(bytes_.data(), size_t(head));
    out.append(size_t(pad), '\0');
    out.append(bytes_.data() + h.data_at, size_t(h.nbytes));
    return nb::bytes(out.data(), out.size());
  }

 private:
  std::string bytes_;
  uint64_t segment_off_ = 0;
};

// Writes a canonical encoded value (already validated) into a record,
// re-padding an array's data to the record's own 64-byte boundary.
class RawSource : public sbx::ValueSource {
 public:
  RawSource(const uint8_t* v, uint64_t n) : v_(v), n_(n) {
    if (v[0] == codec::kNdarray) {
      ArrayHeader h;
      parse_array(v, n, 0, &h);  // validated by the caller
      head_ = head_len_of(h);
      data_at_ = h.data_at;
      array_ = true;
    }
  }
  uint64_t max_bytes() const override {
    return array_ ? head_ + (codec::kArrayAlign - 1) + (n_ - data_at_) : n_;
  }
  uint64_t write(uint8_t* dst, uint64_t dst_off) override {
    if (!array_) {
      std::memcpy(dst, v_, n_);
      return n_;
    }
    std::memcpy(dst, v_, head_);
    const uint64_t pos = pad_to_array_data(dst, dst_off, head_);
    std::memcpy(dst + pos, v_ + data_at_, n_ - data_at_);
    return pos + (n_ - data_at_);
  }

 private:
  const uint8_t* v_;
  uint64_t n_;
  bool array_ = false;
  uint64_t head_ = 0, data_at_ = 0;
};

}  // namespace sbx::py
