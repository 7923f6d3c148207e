// views.hpp — zero-copy values (SharedDict.view, create_array, create_bytes):
// PinnedBuffer, the Python object that owns one engine pin and exports the
// pinned memory through the buffer protocol, and the pieces Core uses to take
// and build pins.
//
// Lifetime: every array or memoryview made from a PinnedBuffer keeps it alive
// (as its base object, or through its buffer export), so the pin lasts while
// any object uses the memory, and the PinnedBuffer holds the Dict (a
// shared_ptr), so close() does not unmap the segment under a view.
//
// Read-only: a view's buffer refuses PyBUF_WRITABLE, so NumPy makes its
// arrays read-only and refuses `flags.writeable = True` (it asks the base for
// a writable buffer first).  A building buffer is writable until it is
// published or abandoned, and read-only from then on.
#pragma once

#include <nanobind/nanobind.h>

#include <memory>
#include <string>
#include <unordered_map>

#include "common.hpp"
#include "sharedbox/dict.hpp"
#include "values.hpp"

namespace sbx::py {

class PinnedBuffer {
 public:
  PinnedBuffer(std::shared_ptr<sbx::Dict> dict, const sbx::Pin& pin, uint8_t* data, uint64_t len,
               bool writable)
      : dict_(std::move(dict)), pin_(pin), data_(data), len_(len), writable_(writable) {}
  ~PinnedBuffer() { release(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  // Buffer protocol (type slots, see module.cpp).
  int get_buffer(PyObject* self, Py_buffer* view, int flags) {
    if (PyBuffer_FillInfo(view, self, data_, Py_ssize_t(len_), writable_ ? 0 : 1, flags) < 0)
      return -1;
    ++exports_;
    return 0;
  }
  void release_buffer() { --exports_; }

  Py_ssize_t exports() const { return exports_; }
  bool writable() const { return writable_; }
  void make_read_only() { writable_ = false; }
  const sbx::Pin& pin() const { return pin_; }
  sbx::Dict& dict() const { return *dict_; }

 private:
  void release() {
    if (!dict_) return;
    try {
      dict_->unpin(pin_);
    } catch (const std::exception& e) {
      // A destructor cannot raise: report it the way Python reports errors in __del__.
      PyErr_SetString(PyExc_RuntimeError,
                      (std::string("sharedbox could not release a view: ") + e.what()).c_str());
      PyErr_WriteUnraisable(nullptr);
    }
    dict_.reset();
  }

  std::shared_ptr<sbx::Dict> dict_;
  sbx::Pin pin_;
  uint8_t* data_;
  uint64_t len_;
  bool writable_;
  Py_ssize_t exports_ = 0;
};

// Accepts arrays and bytes for a view (Dict::pin), under the stripe lock.
struct NotViewable {
  uint8_t tag;
};

class ViewCheck : public sbx::PinCheck {
 public:
  void check(const uint8_t* v, uint64_t n, uint64_t off) override {
    if (n == 0) throw_corrupt_value();
    tag = v[0];
    if (tag == codec::kNdarray) {
      if (!parse_array(v, n, off, &array)) throw_corrupt_value();
      return;
    }
    if (tag != codec::kBytes) throw NotViewable{tag};
  }
  uint8_t tag = 0;
  ArrayHeader array{};
};

// The start of a value that the caller fills in place (Dict::begin_build):
// the head, then (arrays) zero padding to the data's 64-byte boundary.
class HeadSource : public sbx::ValueSource {
 public:
  HeadSource(std::string head, bool align, uint64_t data_bytes)
      : head_(std::move(head)), align_(align), data_bytes_(data_bytes) {}
  uint64_t max_bytes() const override {
    return head_.size() + (align_ ? codec::kArrayAlign - 1 : 0) + data_bytes_;
  }
  uint64_t write(uint8_t* dst, uint64_t dst_off) override {
    std::memcpy(dst, head_.data(), head_.size());
    return align_ ? pad_to_array_data(dst, dst_off, head_.size()) : head_.size();
  }

 private:
  std::string head_;
  bool align_;
  uint64_t data_bytes_;
};

// The array of a view: numpy.frombuffer(holder, dtype), then given its
// shape in place (frombuffer is the cheapest way NumPy makes an array over
// a read-only buffer: about 0.5 us, against 1.4 us for ndarray(buffer=...),
// whose keyword arguments and failed writable request cost the rest).  The
// dtype of each descr is kept (up to kDtypeCacheSize of them).
inline nb::object array_over(const nb::object& holder, const char* descr, uint16_t descr_len,
                             const uint64_t* shape, uint32_t ndim, bool fortran) {
  static auto* dtypes = new std::unordered_map<std::string, nb::object>();  // never freed
  constexpr size_t kDtypeCacheSize = 1024;
  std::string key(descr, descr_len);
  auto found = dtypes->find(key);
  nb::object dtype;
  if (found != dtypes->end()) {
    dtype = found->second;
  } else {
    nb::object d = nb::steal(PyBytes_FromStringAndSize(descr, descr_len));
    PyObject* args[] = {d.ptr()};
    dtype = nb::steal(PyObject_Vectorcall(g.array_dtype, args, 1, nullptr));
    if (!dtype.is_valid()) throw nb::python_error();
    if (dtypes->size() < kDtypeCacheSize) dtypes->emplace(std::move(key), dtype);
  }
  PyObject* args[] = {holder.ptr(), dtype.ptr()};
  nb::object arr = nb::steal(PyObject_Vectorcall(g.numpy_frombuffer(), args, 2, nullptr));
  if (!arr.is_valid()) throw nb::python_error();
  if (ndim == 1) return arr;
  // C order: the flat array takes the shape.  Fortran order: it takes the
  // reversed shape, and the transpose is the array (a view, no copy).
  nb::object dims = nb::steal(PyTuple_New(ndim));
  for (uint32_t i = 0; i < ndim; ++i)
    PyTuple_SET_ITEM(dims.ptr(), i,
                     PyLong_FromUnsignedLongLong(shape[fortran ? ndim - 1 - i : i]));
  if (PyObject_SetAttrString(arr.ptr(), "shape", dims.ptr()) < 0) throw nb::python_error();
  if (!fortran || ndim < 2) return arr;
  PyObject* t = PyObject_GetAttrString(arr.ptr(), "T");
  if (!t) throw nb::python_error();
  return nb::steal(t);
}

// What a view's message calls a stored value of this tag.
inline const char* tag_name(uint8_t tag) {
  switch (tag) {
    case codec::kNone: return "None";
    case codec::kFalse:
    case codec::kTrue: return "a bool";
    case codec::kInt64: return "an int";
    case codec::kFloat64: return "a float";
    case codec::kStr: return "a str";
    case codec::kPickle: return "a pickled object";
    case codec::kTree: return "a dict, list or tuple";
    default: return "not an array or bytes";
  }
}

}  // namespace sbx::py
