// module.cpp — sharedbox._core: the nanobind binding of sbx::Dict.
//
// Thin on purpose: key conversion, the value codec (codec.hpp), the GIL, and
// a use count that lets close() run while other threads are inside an
// operation.  Two rules keep the GIL and the shared locks from deadlocking:
//   1. No Python code runs while a shared lock is held (a value read under a
//      lock is copied into a private buffer and decoded after unlocking).
//   2. A thread may block on a shared lock while holding the GIL, because by
//      rule 1 the lock's holder never waits for the GIL.
// The hot dunder methods are installed as type slots (no method lookup).
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>

#include "codec.hpp"
#include "sharedbox/dict.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

namespace codec = sbx::codec;

constexpr uint64_t kReleaseGilBytes = 1 << 20;  // copies this large run without the GIL
constexpr uint64_t kInlineBytes = 256;

// ---------------------------------------------------------------------------
// Python objects supplied by the pure-Python layer at import time.

struct Registry {
  PyObject* errors[16] = {};  // indexed by sbx::Errc, plus kClosedIndex
  PyObject* pickle_dumps = nullptr;
  PyObject* pickle_loads = nullptr;
  PyObject* array_header = nullptr;
  PyObject* array_new = nullptr;
  PyObject* ndarray_type = nullptr;  // set once numpy has been imported
};
Registry g;
constexpr int kClosedIndex = 15;
constexpr int kPickleRefusedIndex = 14;


struct ClosedError {
  std::string name;
};

PyObject* error_type(int index, PyObject* fallback) {
  return g.errors[index] ? g.errors[index] : fallback;
}

[[noreturn]] void throw_pickle_refused(const char* what) {
  PyErr_SetString(error_type(kPickleRefusedIndex, PyExc_ValueError), what);
  throw nb::python_error();
}

void set_python_error(const sbx::Error& e) {
  using sbx::Errc;
  switch (e.code()) {
    case Errc::InvalidArgument:
      PyErr_SetString(PyExc_ValueError, e.what());
      return;
    case Errc::System: {
      PyObject* args = Py_BuildValue("(is)", e.sys_errno(), e.what());
      PyErr_SetObject(PyExc_OSError, args);
      Py_XDECREF(args);
      return;
    }
    default:
      break;
  }
  PyObject* fallback = PyExc_RuntimeError;
  if (e.code() == Errc::NotFound) fallback = PyExc_FileNotFoundError;
  if (e.code() == Errc::PermissionDenied) fallback = PyExc_PermissionError;
  PyObject* type = error_type(int(e.code()), fallback);
  if (e.sys_errno() && PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(type),
                                        reinterpret_cast<PyTypeObject*>(PyExc_OSError))) {
    PyObject* args = Py_BuildValue("(is)", e.sys_errno(), e.what());
    PyErr_SetObject(type, args);
    Py_XDECREF(args);
  } else {
    PyErr_SetString(type, e.what());
  }
}

void set_closed_error(const ClosedError& e) {
  std::string msg = "SharedDict '" + e.name + "' is closed";
  PyErr_SetString(error_type(kClosedIndex, PyExc_RuntimeError), msg.c_str());
}

// Converts the exception in flight into a Python error (for raw slot functions).
void set_error_from_current_exception() {
  try {
    throw;
  } catch (nb::python_error& e) {
    e.restore();
  } catch (const sbx::Error& e) {
    set_python_error(e);
  } catch (const ClosedError& e) {
    set_closed_error(e);
  } catch (const nb::builtin_exception& e) {
    // nb::type_error and friends: let nanobind's own translation run.
    PyObject* t = PyExc_RuntimeError;
    switch (e.type()) {
      case nb::exception_type::type_error: t = PyExc_TypeError; break;
      case nb::exception_type::value_error: t = PyExc_ValueError; break;
      case nb::exception_type::key_error: t = PyExc_KeyError; break;
      default: break;
    }
    PyErr_SetString(t, e.what());
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
}

// ---------------------------------------------------------------------------
// Keys.

struct KeyBytes {
  const char* data;
  Py_ssize_t len;
};

KeyBytes key_bytes(PyObject* key) {
  if (!PyUnicode_Check(key)) {
    std::string msg = std::string("SharedDict keys must be str, not ") + Py_TYPE(key)->tp_name;
    throw nb::type_error(msg.c_str());
  }
  Py_ssize_t n;
  const char* p = PyUnicode_AsUTF8AndSize(key, &n);
  if (!p) {
    nb::python_error err;
    nb::raise_from(err, PyExc_ValueError,
                   "SharedDict keys must be encodable as UTF-8; this key contains a lone "
                   "surrogate code point");
  }
  return {p, n};
}

// ---------------------------------------------------------------------------
// Values: encoding (a ValueSource) and decoding (a ValueSink).

void copy_bytes(uint8_t* dst, const uint8_t* src, uint64_t n, bool may_release_gil) {
  if (n >= kReleaseGilBytes && may_release_gil) {
    nb::gil_scoped_release unlocked;
    std::memcpy(dst, src, n);
  } else if (n) {
    std::memcpy(dst, src, n);
  }
}

class Encoded : public sbx::ValueSource {
 public:
  explicit Encoded(bool allow_pickle) : allow_pickle_(allow_pickle) {}
  uint64_t max_bytes() const override {
    return head_.size() + payload_len_ + (align_ ? codec::kArrayAlign - 1 : 0);
  }
  uint64_t write(uint8_t* dst, uint64_t dst_off) override {
    std::memcpy(dst, head_.data(), head_.size());
    uint64_t pos = head_.size();
    if (align_) {
      uint64_t pad = (codec::kArrayAlign - (dst_off + pos) % codec::kArrayAlign) % codec::kArrayAlign;
      std::memset(dst + pos, 0, pad);
      pos += pad;
    }
    if (payload_len_) std::memcpy(dst + pos, payload_, payload_len_);
    return pos + payload_len_;
  }
  uint64_t payload_len() const { return payload_len_; }

  void encode(PyObject* v) {
    PyTypeObject* t = Py_TYPE(v);
    if (v == Py_None) return tag_only(codec::kNone);
    if (t == &PyBool_Type) return tag_only(v == Py_True ? codec::kTrue : codec::kFalse);
    if (t == &PyLong_Type) {
      int overflow = 0;
      long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
      if (!overflow && !(x == -1 && PyErr_Occurred())) {
        head_.assign(1, char(codec::kInt64));
        head_.append(reinterpret_cast<const char*>(&x), 8);
        return;
      }
      PyErr_Clear();
      return pickled(v);
    }
    if (t == &PyFloat_Type) {
      double x = PyFloat_AS_DOUBLE(v);
      head_.assign(1, char(codec::kFloat64));
      head_.append(reinterpret_cast<const char*>(&x), 8);
      return;
    }
    if (t == &PyUnicode_Type) {
      Py_ssize_t n;
      const char* p = PyUnicode_AsUTF8AndSize(v, &n);
      if (!p) {  // lone surrogates: pickle keeps them
        PyErr_Clear();
        return pickled(v);
      }
      head_.assign(1, char(codec::kStr));
      keep_ = nb::borrow(v);
      payload_ = reinterpret_cast<const uint8_t*>(p);
      payload_len_ = uint64_t(n);
      return;
    }
    if (t == &PyBytes_Type) {
      head_.assign(1, char(codec::kBytes));
      keep_ = nb::borrow(v);
      payload_ = reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(v));
      payload_len_ = uint64_t(PyBytes_GET_SIZE(v));
      return;
    }
    if (is_ndarray(t) && array(v)) return;
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

  void tag_only(codec::Tag tag) { head_.assign(1, char(tag)); }

  // Stores the contents of a buffer-protocol object (C order) as bytes.
  void buffer_bytes(PyObject* v) {
    // A C-contiguous view of v, copied only if v's memory is not C-contiguous.
    nb::object view = nb::steal(PyMemoryView_GetContiguous(v, PyBUF_READ, 'C'));
    if (!view.is_valid()) throw nb::python_error();  // e.g. a released memoryview
    const Py_buffer* b = PyMemoryView_GET_BUFFER(view.ptr());
    head_.assign(1, char(codec::kBytes));
    payload_ = static_cast<const uint8_t*>(b->buf);
    payload_len_ = uint64_t(b->len);
    keep_ = std::move(view);
  }

  void pickled(PyObject* v) {
    if (!allow_pickle_)
      throw_pickle_refused(
          "this SharedDict was opened with allow_pickle=False: only None, bool, int64, "
          "float, str, bytes, memoryview and NumPy arrays (not of object dtype) can be "
          "stored");
    nb::object data = nb::steal(PyObject_CallOneArg(g.pickle_dumps, v));
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
    head_.assign(1, char(codec::kPickle));
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
    nb::tuple shape = nb::cast<nb::tuple>(t[1]);
    bool fortran = nb::cast<bool>(t[2]);
    uintptr_t ptr = nb::cast<uintptr_t>(t[3]);
    uint64_t nbytes = nb::cast<uint64_t>(t[4]);
    size_t ndim = nb::len(shape);
    if (ndim > codec::kArrayMaxDims || descr.size() > 0xFFFF)
      throw nb::value_error("array has too many dimensions or too complex a dtype to store");
    head_.assign(1, char(codec::kNdarray));
    head_.push_back(char(fortran ? 1 : 0));
    head_.push_back(char(ndim));
    uint16_t dl = uint16_t(descr.size());
    head_.append(reinterpret_cast<const char*>(&dl), 2);
    head_.append(reinterpret_cast<const char*>(&nbytes), 8);
    for (size_t i = 0; i < ndim; ++i) {
      uint64_t d = nb::cast<uint64_t>(shape[i]);
      head_.append(reinterpret_cast<const char*>(&d), 8);
    }
    head_.append(descr.c_str(), descr.size());
    payload_ = reinterpret_cast<const uint8_t*>(ptr);
    payload_len_ = nbytes;
    align_ = true;
    keep_ = std::move(parts);
    return true;
  }

  bool allow_pickle_;
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

bool parse_array(const uint8_t* v, uint64_t n, uint64_t segment_off, ArrayHeader* h) {
  if (n < codec::kArrayFixedHeader) return false;
  h->fortran = v[1] & 1;
  h->ndim = v[2];
  std::memcpy(&h->descr_len, v + 3, 2);
  std::memcpy(&h->nbytes, v + 5, 8);
  if (h->ndim > codec::kArrayMaxDims) return false;
  uint64_t pos = codec::kArrayFixedHeader;
  if (n - pos < uint64_t(h->ndim) * 8) return false;
  std::memcpy(h->shape, v + pos, size_t(h->ndim) * 8);
  pos += uint64_t(h->ndim) * 8;
  if (n - pos < h->descr_len) return false;
  h->descr = reinterpret_cast<const char*>(v + pos);
  pos += h->descr_len;
  pos += (codec::kArrayAlign - (segment_off + pos) % codec::kArrayAlign) % codec::kArrayAlign;
  if (pos > n || n - pos != h->nbytes) return false;
  h->data_at = pos;
  return true;
}

[[noreturn]] void throw_corrupt_value() {
  throw sbx::Error(sbx::Errc::Corrupt, "a stored value is malformed");
}

// Builds a new ndarray for `h` and copies `data` into it.
nb::object make_array(const ArrayHeader& h, const uint8_t* data, bool may_release_gil) {
  nb::object shape = nb::steal(PyTuple_New(h.ndim));
  for (uint32_t i = 0; i < h.ndim; ++i)
    PyTuple_SET_ITEM(shape.ptr(), i, PyLong_FromUnsignedLongLong(h.shape[i]));
  nb::object descr = nb::steal(PyBytes_FromStringAndSize(h.descr, h.descr_len));
  nb::object nbytes_obj = nb::steal(PyLong_FromUnsignedLongLong(h.nbytes));
  nb::object made = nb::steal(PyObject_CallFunctionObjArgs(
      g.array_new, descr.ptr(), shape.ptr(), h.fortran ? Py_True : Py_False, nbytes_obj.ptr(),
      nullptr));
  if (!made.is_valid()) throw nb::python_error();
  // (array, data_ptr, nbytes)
  nb::tuple t = nb::cast<nb::tuple>(made);
  uint64_t nbytes = nb::cast<uint64_t>(t[2]);
  if (nbytes != h.nbytes) throw_corrupt_value();
  auto* dst = reinterpret_cast<uint8_t*>(nb::cast<uintptr_t>(t[1]));
  copy_bytes(dst, data, nbytes, may_release_gil);
  return nb::borrow(t[0]);
}

class Sink : public sbx::ValueSink {
 public:
  explicit Sink(bool allow_pickle) : allow_pickle_(allow_pickle) {}
  ~Sink() override { std::free(heap_); }

  void take(const uint8_t* v, uint64_t n, uint64_t segment_off, bool under_lock) override {
    if (n == 0) throw_corrupt_value();
    segment_off_ = segment_off;
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
        PyObject* s = PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(v + 1), Py_ssize_t(n - 1), "strict");
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
    PyObject* obj = PyObject_CallOneArg(g.pickle_loads, data.ptr());
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

// The header bytes of a value (everything before the padding): an array's
// fixed header, shape and descr; the whole value for every other tag.
uint64_t head_len_of(const ArrayHeader& h) {
  return codec::kArrayFixedHeader + uint64_t(h.ndim) * 8 + h.descr_len;
}

// Checks that `v` is one well-formed canonical encoded value; throws
// ValueError saying what is wrong (PickleRefusedError for a pickle when
// pickles are refused).  Nothing is decoded.
void validate_encoded(const uint8_t* v, uint64_t n, bool allow_pickle) {
  if (n == 0) throw nb::value_error("an encoded value cannot be empty");
  switch (v[0]) {
    case codec::kNone:
    case codec::kFalse:
    case codec::kTrue:
      if (n != 1) throw nb::value_error("malformed encoded value: trailing bytes after its tag");
      return;
    case codec::kInt64:
    case codec::kFloat64:
      if (n != 9) throw nb::value_error("malformed encoded value: a number takes 8 bytes");
      return;
    case codec::kStr: {
      PyObject* s = PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(v + 1), Py_ssize_t(n - 1),
                                         "strict");
      if (!s) {
        PyErr_Clear();
        throw nb::value_error("malformed encoded value: a str that is not UTF-8");
      }
      Py_DECREF(s);
      return;
    }
    case codec::kBytes:
      return;
    case codec::kPickle:
      if (!allow_pickle)
        throw_pickle_refused(
            "refusing an encoded value that needs pickle: this handle was opened with "
            "allow_pickle=False");
      return;
    case codec::kNdarray: {
      ArrayHeader h;
      if (!parse_array(v, n, 0, &h))
        throw nb::value_error("malformed encoded value: a bad array header or data size");
      return;
    }
    default: {
      std::string msg = "malformed encoded value: unknown tag " + std::to_string(int(v[0]));
      throw nb::value_error(msg.c_str());
    }
  }
}

// Buffer protocol view of a bytes object (bytes only: immutable, so a copy
// made without the GIL cannot see it change or move).
struct BytesIn {
  const uint8_t* p;
  uint64_t n;
  explicit BytesIn(const nb::bytes& b)
      : p(reinterpret_cast<const uint8_t*>(b.c_str())), n(uint64_t(b.size())) {}
};

nb::bytes encode_value(nb::handle value, bool allow_pickle) {
  Encoded enc(allow_pickle);
  enc.encode(value.ptr());
  uint64_t cap = enc.max_bytes();
  nb::object out = nb::steal(PyBytes_FromStringAndSize(nullptr, Py_ssize_t(cap)));
  if (!out.is_valid()) throw nb::python_error();
  auto* dst = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(out.ptr()));
  uint64_t n;
  if (enc.payload_len() >= kReleaseGilBytes) {
    nb::gil_scoped_release unlocked;
    n = enc.write(dst, 0);
  } else {
    n = enc.write(dst, 0);
  }
  if (n != cap) {
    PyObject* p = out.release().ptr();
    if (_PyBytes_Resize(&p, Py_ssize_t(n)) != 0) throw nb::python_error();
    out = nb::steal(p);
  }
  return nb::borrow<nb::bytes>(out);
}

nb::object decode_value(const nb::bytes& data, bool allow_pickle) {
  BytesIn in(data);
  if (in.n == 0) throw_corrupt_value();
  Sink sink(allow_pickle);
  sink.take(in.p, in.n, 0, false);  // offset 0: canonical form
  return sink.decode();
}

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
    uint64_t pad = (codec::kArrayAlign - (dst_off + head_) % codec::kArrayAlign) % codec::kArrayAlign;
    std::memset(dst + head_, 0, pad);
    std::memcpy(dst + head_ + pad, v_ + data_at_, n_ - data_at_);
    return head_ + pad + (n_ - data_at_);
  }

 private:
  const uint8_t* v_;
  uint64_t n_;
  bool array_ = false;
  uint64_t head_ = 0, data_at_ = 0;
};

// ---------------------------------------------------------------------------
// Read-only views for the command-line tool (sharedbox._cli).

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

// ---------------------------------------------------------------------------
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
bool same_encoded_value(const uint8_t* v, uint64_t n, const uint8_t* e, uint64_t en) {
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

// ---------------------------------------------------------------------------
// The handle.

class Core {
 public:
  Core(const std::string& name, bool create, uint64_t size, uint64_t max_keys, uint32_t stripes,
       uint32_t mode, double attach_timeout, bool allow_pickle)
      : allow_pickle_(allow_pickle) {
    sbx::OpenOptions o;
    o.name = name;
    o.create = create;
    o.size = size;
    o.max_keys = max_keys;
    o.stripes = stripes;
    o.mode = mode;
    (void)attach_timeout;  // attaching never waits (segment.cpp)
    {
      nb::gil_scoped_release unlocked;  // attaching may wait for a creator
      dict_ = sbx::Dict::open(o, &created_);
    }
    name_ = name;
    segment_bytes_ = dict_->segment_bytes();
    max_keys_ = dict_->max_keys();
    stripes_ = dict_->stripe_count();
    mode_ = dict_->mode();
    created_ns_ = dict_->created_unix_ns();
    seed_ = dict_->hash_seed();
    opened_pid_ = ::getpid();
    std::lock_guard<std::mutex> hold(registry_mutex());
    registry().insert(this);
  }

  ~Core() {
    std::lock_guard<std::mutex> hold(registry_mutex());
    registry().erase(this);
  }

  // fork() copies the use count of threads that were inside an operation,
  // but not the threads: in the child nobody would ever leave, and close()
  // would never unmap.  These handlers keep the count right in the child.
  static void install_fork_handlers() {
    pthread_atfork([] { registry_mutex().lock(); }, [] { registry_mutex().unlock(); },
                   [] {
                     for (Core* c : registry()) c->reset_after_fork();
                     registry_mutex().unlock();
                   });
  }

  // RAII: counts this thread as inside an operation; refuses if closed.
  class Use {
   public:
    explicit Use(Core* c) : c_(c) {
      uint64_t prev = c_->state_.fetch_add(2, std::memory_order_acquire);
      if (prev & 1) {
        leave();
        throw ClosedError{c_->name_};
      }
    }
    ~Use() { leave(); }
    sbx::Dict* operator->() const { return c_->dict_.get(); }
    sbx::Dict& dict() const { return *c_->dict_; }

   private:
    void leave() {
      if (c_->state_.fetch_sub(2, std::memory_order_acq_rel) == 3) c_->release();
    }
    Core* c_;
  };

  void close() {
    uint64_t prev = state_.fetch_or(1, std::memory_order_acq_rel);
    if (!(prev & 1) && (prev >> 1) == 0) release();
  }
  bool closed() const { return state_.load(std::memory_order_acquire) & 1; }

  nb::object get(PyObject* key, bool* found) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    sbx::KeyRef k = d->key(kb.data, size_t(kb.len));
    Sink sink(allow_pickle_);
    *found = d->get(k, sink);
    if (!*found) return nb::object();
    return sink.decode();
  }

  // What dump needs about a value, without decoding it; None if key is absent.
  nb::object value_info(PyObject* key) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    PeekSink sink;
    if (!d->get(d->key(kb.data, size_t(kb.len)), sink)) return nb::none();
    return sink.describe();
  }

  bool contains(PyObject* key) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    return d->contains(d->key(kb.data, size_t(kb.len)));
  }

  bool put(PyObject* key, PyObject* value, sbx::PutMode mode) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    sbx::KeyRef k = d->key(kb.data, size_t(kb.len));
    Encoded enc(allow_pickle_);
    enc.encode(value);
    if (enc.payload_len() >= kReleaseGilBytes) {
      nb::gil_scoped_release unlocked;
      return d->put(k, enc, mode);
    }
    return d->put(k, enc, mode);
  }

  // Removes key; with want_value, returns the removed value (else None).
  bool erase(PyObject* key, bool want_value, nb::object* value) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    sbx::KeyRef k = d->key(kb.data, size_t(kb.len));
    if (!want_value) return d->erase(k, nullptr);
    Sink sink(allow_pickle_);
    if (!d->erase(k, &sink)) return false;
    *value = sink.decode();
    return true;
  }

  Py_ssize_t size() {
    Use d(this);
    return Py_ssize_t(d->exact_size());
  }

  nb::list keys(bool atomic) {
    std::vector<std::string> ks;
    {
      Use d(this);
      ks = d->keys(atomic);
    }
    nb::list out;
    for (const std::string& s : ks) {
      PyObject* o = PyUnicode_DecodeUTF8(s.data(), Py_ssize_t(s.size()), "strict");
      if (!o) throw nb::python_error();
      out.append(nb::steal(o));
    }
    return out;
  }

  nb::dict stats() {
    sbx::Stats st;
    {
      Use d(this);
      st = d->stats();
    }
    nb::dict r;
    r["segment_bytes"] = st.segment_bytes;
    r["heap_bytes"] = st.heap_bytes;
    r["used_bytes"] = st.used_bytes;
    r["free_bytes"] = st.free_bytes;
    r["largest_free_bytes"] = st.largest_free_bytes;
    r["max_keys"] = st.max_keys;
    r["entries"] = st.entries;
    r["stripes"] = st.stripes;
    r["recoveries"] = st.recoveries;
    r["key_bytes"] = st.key_bytes;
    r["value_bytes"] = st.value_bytes;
    r["record_bytes"] = st.record_bytes;
    r["table_bytes"] = st.table_bytes;
    return r;
  }

  // The stored bytes of key's value in canonical form (see RawSink), or None.
  nb::object get_raw(PyObject* key) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    RawSink sink;
    if (!d->get(d->key(kb.data, size_t(kb.len)), sink)) return nb::none();
    return sink.canonical();
  }

  // Stores canonical encoded bytes as key's value, without decoding them.
  void put_raw(PyObject* key, const nb::bytes& data) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    BytesIn in(data);
    validate_encoded(in.p, in.n, allow_pickle_);
    RawSource src(in.p, in.n);
    sbx::KeyRef k = d->key(kb.data, size_t(kb.len));
    if (in.n >= kReleaseGilBytes) {
      nb::gil_scoped_release unlocked;
      d->put(k, src, sbx::PutMode::Always);
      return;
    }
    d->put(k, src, sbx::PutMode::Always);
  }

  // Coordination (SharedDict.incr, compare_and_set, version, wait, lock).

  nb::object incr(PyObject* key, PyObject* delta) {
    bool is_int = PyLong_CheckExact(delta);
    int64_t di = 0;
    double df = 0;
    if (is_int) {
      int overflow = 0;
      di = PyLong_AsLongLongAndOverflow(delta, &overflow);
      if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "incr() delta does not fit in a 64-bit int");
        throw nb::python_error();
      }
    } else if (PyFloat_CheckExact(delta)) {
      df = PyFloat_AS_DOUBLE(delta);
    } else {
      std::string msg = std::string("incr() delta must be an int or a float, not ") +
                        Py_TYPE(delta)->tp_name;
      throw nb::type_error(msg.c_str());
    }
    Use d(this);
    KeyBytes kb = key_bytes(key);
    IncrDecision decision(is_int, di, df);
    d->update(d->key(kb.data, size_t(kb.len)), decision);
    return decision.result();
  }

  // expected == nullptr: only if the key is absent (sharedbox.MISSING).
  bool compare_and_set(PyObject* key, PyObject* expected, PyObject* value) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    sbx::KeyRef k = d->key(kb.data, size_t(kb.len));
    Encoded enc(allow_pickle_);
    enc.encode(value);
    nb::bytes want;
    if (expected) want = encode_value(nb::handle(expected), allow_pickle_);
    CompareDecision decision(expected ? &want : nullptr, enc);
    return d->update(k, decision);
  }

  nb::object version(PyObject* key) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    uint64_t v = 0;
    if (!d->version(d->key(kb.data, size_t(kb.len)), &v)) return nb::none();
    return nb::steal(PyLong_FromUnsignedLongLong(v));
  }

  // Waits at most `slice` seconds, without the GIL, for key's version to
  // differ from `seen` (0: absent).  Returns (changed, version or None).
  nb::tuple wait_slice(PyObject* key, uint64_t seen, double slice) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    sbx::KeyRef k = d->key(kb.data, size_t(kb.len));
    uint64_t now = 0;
    bool changed;
    {
      nb::gil_scoped_release unlocked;
      changed = d->wait_change(k, seen, slice, &now);
    }
    nb::object v = now ? nb::steal(PyLong_FromUnsignedLongLong(now)) : nb::none();
    return nb::make_tuple(changed, v);
  }

  uint32_t lock_slot(const std::string& lock_name) {
    Use d(this);
    return d->named_lock(lock_name);
  }
  // 0: timed out, 1: acquired, 2: acquired from a holder that died.
  int lock_acquire(uint32_t slot, double timeout) {
    Use d(this);
    sbx::LockResult r;
    {
      nb::gil_scoped_release unlocked;
      r = d->lock_named(slot, timeout);
    }
    return r == sbx::LockResult::TimedOut ? 0 : r == sbx::LockResult::Acquired ? 1 : 2;
  }
  void lock_release(uint32_t slot) {
    Use d(this);
    d->unlock_named(slot);
  }
  bool lock_locked(uint32_t slot) {
    Use d(this);
    return d->named_locked(slot);
  }

  std::vector<std::string> check() {
    Use d(this);
    return d->check_integrity();
  }

  const std::string& name() const { return name_; }
  uint64_t segment_bytes() const { return segment_bytes_; }
  uint64_t max_keys() const { return max_keys_; }
  uint32_t stripes() const { return stripes_; }
  uint32_t mode() const { return mode_; }
  // A forked child inherits the handle but did not create the segment: it
  // must not act as the creator (e.g. unlink it when it is done).
  bool created() const { return created_ && ::getpid() == opened_pid_; }
  std::pair<uint64_t, uint64_t> identity() const { return {created_ns_, seed_}; }
  bool allow_pickle() const { return allow_pickle_; }
  uint32_t creator_pid() {
    Use d(this);
    return d->creator_pid();
  }

 private:
  void release() {
    if (!released_.exchange(true, std::memory_order_acq_rel)) dict_.reset();
  }

  // In a forked child (only the forking thread exists): drop the counts of
  // the threads that stayed behind, and finish a close() that waited for them.
  void reset_after_fork() {
    uint64_t closed = state_.load(std::memory_order_relaxed) & 1;
    state_.store(closed, std::memory_order_relaxed);
    if (closed) release();
  }

  static std::mutex& registry_mutex() {
    static std::mutex* m = new std::mutex;  // never destroyed: fork may run at exit
    return *m;
  }
  static std::unordered_set<Core*>& registry() {  // every live handle
    static auto* handles = new std::unordered_set<Core*>;
    return *handles;
  }

  std::unique_ptr<sbx::Dict> dict_;
  std::atomic<uint64_t> state_{0};  // (threads inside an operation << 1) | closed
  std::atomic<bool> released_{false};
  std::string name_;
  bool created_ = false;
  uint64_t segment_bytes_ = 0, max_keys_ = 0;
  uint32_t stripes_ = 0, mode_ = 0;
  uint64_t created_ns_ = 0, seed_ = 0;  // the segment's identity (see name_state)
  pid_t opened_pid_ = 0;
  bool allow_pickle_ = true;
};

// The slot functions are reached without nanobind's argument checks, so they
// check themselves that __init__ ran (a subclass may forget super().__init__()).
Core* core_of(PyObject* self) {
  if (!nb::inst_ready(nb::handle(self)))
    throw nb::type_error(
        "this SharedDict is not initialised: its __init__ never ran (a subclass's "
        "__init__ must call super().__init__(...))");
  return nb::inst_ptr<Core>(nb::handle(self));
}

// ---------------------------------------------------------------------------
// Type slots for the hot paths.

PyObject* slot_getitem(PyObject* self, PyObject* key) {
  try {
    bool found;
    nb::object v = core_of(self)->get(key, &found);
    if (!found) {
      PyErr_SetObject(PyExc_KeyError, key);
      return nullptr;
    }
    return v.release().ptr();
  } catch (...) {
    set_error_from_current_exception();
    return nullptr;
  }
}

int slot_setitem(PyObject* self, PyObject* key, PyObject* value) {
  try {
    Core* c = core_of(self);
    if (value) {
      c->put(key, value, sbx::PutMode::Always);
      return 0;
    }
    if (!c->erase(key, false, nullptr)) {
      PyErr_SetObject(PyExc_KeyError, key);
      return -1;
    }
    return 0;
  } catch (...) {
    set_error_from_current_exception();
    return -1;
  }
}

int slot_contains(PyObject* self, PyObject* key) {
  try {
    return core_of(self)->contains(key) ? 1 : 0;
  } catch (...) {
    set_error_from_current_exception();
    return -1;
  }
}

Py_ssize_t slot_len(PyObject* self) {
  try {
    return core_of(self)->size();
  } catch (...) {
    set_error_from_current_exception();
    return -1;
  }
}

PyType_Slot core_slots[] = {
    {Py_mp_subscript, reinterpret_cast<void*>(slot_getitem)},
    {Py_mp_ass_subscript, reinterpret_cast<void*>(slot_setitem)},
    {Py_mp_length, reinterpret_cast<void*>(slot_len)},
    {Py_sq_length, reinterpret_cast<void*>(slot_len)},
    {Py_sq_contains, reinterpret_cast<void*>(slot_contains)},
    {0, nullptr},
};

// Gives a slot's wrapper descriptor (e.g. SharedDictCore.__setitem__) our own
// docstring for help().  Assigning a Python function instead would turn the
// native slot into a slow generic one; a wrapper descriptor with the same
// wrapper and wrapped function keeps it native (CPython recognises it when it
// fills the slots of subclasses).  The copied wrapperbase lives as long as
// the type, i.e. forever.
void document_slot(nb::handle type, const char* name, const char* doc) {
  auto* tp = reinterpret_cast<PyTypeObject*>(type.ptr());
  PyObject* old = PyDict_GetItemString(tp->tp_dict, name);  // borrowed
  if (!old || Py_TYPE(old) != &PyWrapperDescr_Type) return;
  auto* descr = reinterpret_cast<PyWrapperDescrObject*>(old);
  auto* base = new wrapperbase(*descr->d_base);
  base->doc = doc;
  nb::object fresh = nb::steal(PyDescr_NewWrapper(tp, base, descr->d_wrapped));
  if (!fresh.is_valid() || PyDict_SetItemString(tp->tp_dict, name, fresh.ptr()) != 0)
    throw nb::python_error();
  PyType_Modified(tp);
}

const char* kErrorNames[] = {
    "InvalidArgument", "NotFound", "PermissionDenied", "NoSpaceOnDevice", "Incompatible",
    "NotReady", "SegmentFull", "ValueTooLarge", "TooManyKeys", "Corrupt", "System",
    "TooManyLocks", "LockMisuse",
};

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "Native engine of sharedbox (use the sharedbox package, not this module).";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const sbx::Error& e) {
      set_python_error(e);
    } catch (const ClosedError& e) {
      set_closed_error(e);
    }
  });

  m.attr("LAYOUT_VERSION") = sbx::kLayoutVersion;
  m.attr("SEGMENT_MAGIC") = sbx::kMagic;  // the header's first 8 bytes, little-endian
  // Where the robust mutexes sit, for tools and tests that write raw bytes.
  m.attr("ALLOC_MUTEX_OFFSET") =
      offsetof(sbx::SegmentHeader, h_alloc) + offsetof(sbx::AllocState, a_mutex);
  m.attr("STRIPE_BYTES") = sizeof(sbx::Stripe);
  m.attr("STRIPE_MUTEX_OFFSET") = offsetof(sbx::Stripe, s_mutex);
  m.attr("MUTEX_BYTES") = sizeof(pthread_mutex_t);
  m.attr("PAGE_BYTES") = sbx::kPage;
  // Limits of the creation parameters (the Python layer checks against them).
  m.attr("MAX_SEGMENT_BYTES") = sbx::kMaxSegmentBytes;
  m.attr("MAX_KEYS") = sbx::kMaxKeysLimit;
  m.attr("MAX_STRIPES") = sbx::kMaxStripes;

  m.def("_set_error_types", [](nb::dict types) {
    auto take = [&](const char* name, int index) {
      if (types.contains(name)) {
        nb::object t = types[name];
        g.errors[index] = t.inc_ref().ptr();
      }
    };
    for (size_t i = 0; i < sizeof(kErrorNames) / sizeof(kErrorNames[0]); ++i)
      take(kErrorNames[i], int(i));
    take("Closed", kClosedIndex);
    take("PickleRefused", kPickleRefusedIndex);
  });
  m.def("_set_codec", [](nb::object dumps, nb::object loads, nb::object array_header,
                         nb::object array_new) {
    g.pickle_dumps = dumps.inc_ref().ptr();
    g.pickle_loads = loads.inc_ref().ptr();
    g.array_header = array_header.inc_ref().ptr();
    g.array_new = array_new.inc_ref().ptr();
  });
  m.def("default_stripes", [](uint64_t max_keys) { return sbx::default_stripes(max_keys); },
        "max_keys"_a, "The stripe count a SharedDict with this max_keys gets by default.");
  m.def("heap_bytes_for", &sbx::heap_bytes_for, "size"_a, "stripes"_a,
        "Bytes of a segment of this size left for records and index tables.");
  m.def("_peek_header", &peek_header, "data"_a,
        "The identity fields of a segment's header, given its first bytes (None if foreign).");
  m.def("encode_value", &encode_value, "value"_a.none(), "allow_pickle"_a = true,
        "The bytes a SharedDict stores for value (canonical form: the same on every backend).");
  m.def("decode_value", &decode_value, "data"_a, "allow_pickle"_a,
        "The value that encode_value turned into data.");
  m.def("validate_encoded",
        [](const nb::bytes& data, bool allow_pickle) {
          BytesIn in(data);
          validate_encoded(in.p, in.n, allow_pickle);
        },
        "data"_a, "allow_pickle"_a,
        "Raise ValueError unless data is one well-formed encoded value (nothing is decoded).");
  m.def("unlink_segment", [](const std::string& name) { sbx::Dict::unlink(name); }, "name"_a,
        "Removes the shared memory segment of this name.");

  Core::install_fork_handlers();
  m.def("_name_state", &name_state, "name"_a, "created_ns"_a, "seed"_a,
        "'current', 'missing' or 'replaced': what the name refers to now, compared with the "
        "segment of this identity (a handle's _identity).");

  nb::class_<Core> core(m, "SharedDictCore", nb::type_slots(core_slots));
  core
      .def(nb::init<const std::string&, bool, uint64_t, uint64_t, uint32_t, uint32_t, double,
                    bool>(),
           "name"_a, "create"_a, "size"_a, "max_keys"_a, "stripes"_a, "mode"_a,
           "attach_timeout"_a, "allow_pickle"_a)
      .def("get",
           [](Core& c, nb::handle key, nb::handle dflt) -> nb::object {
             bool found;
             nb::object v = c.get(key.ptr(), &found);
             return found ? v : nb::borrow(dflt);
           },
           "key"_a.none(), "default"_a.none() = nb::none(),
           "Return the value for key if key is present, else default.")
      .def("_put_if_absent",
           [](Core& c, nb::handle key, nb::handle value) {
             return c.put(key.ptr(), value.ptr(), sbx::PutMode::IfAbsent);
           },
           "key"_a.none(), "value"_a.none())
      .def("_pop",
           [](Core& c, nb::handle key, nb::handle dflt) -> nb::object {
             nb::object v;
             if (c.erase(key.ptr(), true, &v)) return v;
             return nb::borrow(dflt);
           },
           "key"_a.none(), "default"_a.none())
      .def("_discard", [](Core& c, nb::handle key) { return c.erase(key.ptr(), false, nullptr); },
           "key"_a.none())
      .def("_keys", &Core::keys, "atomic"_a)
      .def("_value_info", [](Core& c, nb::handle key) { return c.value_info(key.ptr()); },
           "key"_a.none(), "(type, stored bytes, dtype descr, shape) of key's value, or None.")
      .def("_stats", &Core::stats)
      .def("_get_raw", [](Core& c, nb::handle key) { return c.get_raw(key.ptr()); },
           "key"_a.none(), "The encoded bytes of key's value (canonical form), or None.")
      .def("_put_raw",
           [](Core& c, nb::handle key, const nb::bytes& data) { c.put_raw(key.ptr(), data); },
           "key"_a.none(), "data"_a, "Store encoded bytes (from _get_raw or encode_value) as key's value.")
      .def("_check_integrity", &Core::check)
      .def("_incr", [](Core& c, nb::handle key, nb::handle delta) {
             return c.incr(key.ptr(), delta.ptr());
           }, "key"_a.none(), "delta"_a.none())
      .def("_compare_and_set", [](Core& c, nb::handle key, nb::handle expected, bool missing,
                                  nb::handle value) {
             return c.compare_and_set(key.ptr(), missing ? nullptr : expected.ptr(), value.ptr());
           }, "key"_a.none(), "expected"_a.none(), "missing"_a, "value"_a.none())
      .def("_version", [](Core& c, nb::handle key) { return c.version(key.ptr()); },
           "key"_a.none())
      .def("_wait_slice", [](Core& c, nb::handle key, uint64_t seen, double slice) {
             return c.wait_slice(key.ptr(), seen, slice);
           }, "key"_a.none(), "seen"_a, "slice"_a)
      .def("_lock_slot", &Core::lock_slot, "name"_a)
      .def("_lock_acquire", &Core::lock_acquire, "slot"_a, "timeout"_a)
      .def("_lock_release", &Core::lock_release, "slot"_a)
      .def("_lock_locked", &Core::lock_locked, "slot"_a)
      .def("close", &Core::close,
           "Unmap the segment from this process; the data stays for other processes.")
      .def("is_closed", &Core::closed, "True once close() has been called on this handle.")
      .def_prop_ro("name", &Core::name, "The segment's name.")
      .def_prop_ro("segment_size", &Core::segment_bytes, "The segment's size in bytes.")
      .def_prop_ro("max_keys", &Core::max_keys, "The most keys the dict can hold.")
      .def_prop_ro("stripes", &Core::stripes, "The number of lock stripes.")
      .def_prop_ro("mode", &Core::mode, "The permission bits the segment was created with.")
      .def_prop_ro("_identity", &Core::identity,
                   "(creation stamp, hash seed): what tells this segment from a later one of "
                   "the same name.")
      .def_prop_ro("created", &Core::created,
                   "True if this handle created the segment (False in a forked child, which "
                   "inherits the handle but is not the creator).")
      .def_prop_ro("allow_pickle", [](const Core& c) { return c.allow_pickle(); },
                   "False if this handle refuses to store or load pickled values.")
      .def_prop_ro("creator_pid", &Core::creator_pid, "PID of the process that created it.");

  // Text signatures in CPython's format ("name($self, ...)\n--\n\n" + doc).
  document_slot(core, "__setitem__",
                "__setitem__($self, key, value, /)\n--\n\n"
                "Set self[key] to value: one atomic step; a failed write leaves the old value.\n\n"
                "Raises TypeError (key not a str), ValueError (a key with a lone surrogate, or a\n"
                "value that cannot be pickled; the cause is chained), PickleRefusedError (the\n"
                "value needs pickle and the handle has allow_pickle=False), TooManyKeysError (a\n"
                "new key beyond max_keys), SegmentFullError (no room for the value;\n"
                "ValueTooLargeError if it can never fit), SharedDictClosedError.");
  document_slot(core, "__getitem__",
                "__getitem__($self, key, /)\n--\n\n"
                "Return a copy of the value stored for key.\n\n"
                "Raises KeyError (absent), TypeError (key not a str), ValueError (the value\n"
                "cannot be unpickled here; the cause is chained), PickleRefusedError\n"
                "(allow_pickle=False and the value is pickled), SharedDictClosedError.");
  document_slot(core, "__delitem__",
                "__delitem__($self, key, /)\n--\n\n"
                "Delete self[key] (atomic).\n\n"
                "Raises KeyError (absent), TypeError (key not a str), SharedDictClosedError.");
}
