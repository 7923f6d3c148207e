// tree_codec.cpp — the native encoding of JSON-like values (codec tag 9):
// dicts, lists and tuples of None, bool, int64, float, str and bytes, nested
// up to kMaxDepth, with exact types kept on the way back.  Pickle is general
// but slow for these (a 4-key dict: ~0.4 us to dump and to load); this
// encoding writes and reads them in one pass without pickle, and so also
// serves handles opened with allow_pickle=False.
//
//   item  := 'N' | 'T' | 'F'                 None, True, False
//          | 'i' int64 LE | 'f' float64      (8 bytes each)
//          | 's' u32 len, UTF-8 | 'b' u32 len, bytes
//          | 'l' u32 n, item*n | 't' u32 n, item*n
//          | 'd' u32 n, (key item, value item)*n
// A dict key is any item but a list or a dict (they are unhashable).  The
// value is tag 9 followed by one item.  Anything else (an int beyond int64, a
// subclass, a set, an object, a str with lone surrogates, deeper nesting, a
// container that contains itself) makes encode_tree() return false, and the
// value is pickled whole instead.
//
// Decoding reads bytes that any process able to write the segment may have
// written: every length is bounds-checked, counts are bounded by the bytes
// left (each item takes at least one), and depth by kMaxDepth.
#include "tree_codec.hpp"

#include <algorithm>
#include <cstring>

namespace sbx::py {
namespace {

constexpr int kMaxDepth = 32;

// The encoder's output: a string grown in large steps and written through
// a pointer (the per-item appends of std::string cost more than pickle's
// whole encoding for a list of floats).
class Out {
 public:
  explicit Out(std::string& s) : s_(s), pos_(s.size()) {}
  ~Out() { s_.resize(pos_); }
  [[gnu::always_inline]] char* need(size_t n) {
    if (__builtin_expect(pos_ + n > s_.size(), 0)) grow(n);
    char* p = s_.data() + pos_;
    pos_ += n;
    return p;
  }
  void byte(char c) { *need(1) = c; }
  template <class T>
  [[gnu::always_inline]] void tagged(char tag, T x) {
    char* p = need(1 + sizeof(T));
    p[0] = tag;
    std::memcpy(p + 1, &x, sizeof(T));
  }
  void bytes(char tag, const char* data, size_t n) {
    char* p = need(5 + n);
    p[0] = tag;
    uint32_t len = uint32_t(n);
    std::memcpy(p + 1, &len, 4);
    std::memcpy(p + 5, data, n);
  }

 private:
  // One step usually suffices (a 100-float list is ~900 bytes): each resize
  // zero-fills what it adds.
  [[gnu::noinline]] void grow(size_t n) { s_.resize(std::max(s_.size() * 2, pos_ + n + 1024)); }

  std::string& s_;
  size_t pos_;
};

bool encode_item(PyObject* v, Out& out, int depth, bool key);

// A member of a list or tuple: floats, the commonest members of long
// sequences, without the recursive call.
[[gnu::always_inline]] inline bool encode_member(PyObject* v, Out& out, int depth, bool key) {
  if (Py_TYPE(v) == &PyFloat_Type) {
    out.tagged('f', PyFloat_AS_DOUBLE(v));
    return true;
  }
  return encode_item(v, out, depth, key);
}

bool encode_item(PyObject* v, Out& out, int depth, bool key) {
  PyTypeObject* t = Py_TYPE(v);
  if (t == &PyFloat_Type) {  // first: the commonest item of long lists
    out.tagged('f', PyFloat_AS_DOUBLE(v));
    return true;
  }
  if (t == &PyUnicode_Type) {
    Py_ssize_t n;
    const char* p = utf8_of(v, &n);
    if (!p || uint64_t(n) > UINT32_MAX) {
      PyErr_Clear();
      return false;
    }
    out.bytes('s', p, size_t(n));
    return true;
  }
  if (t == &PyLong_Type) {
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) return false;
    if (x == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    out.tagged('i', int64_t(x));
    return true;
  }
  if (v == Py_None) {
    out.byte('N');
    return true;
  }
  if (t == &PyBool_Type) {
    out.byte(v == Py_True ? 'T' : 'F');
    return true;
  }
  if (t == &PyBytes_Type) {
    Py_ssize_t n = PyBytes_GET_SIZE(v);
    if (uint64_t(n) > UINT32_MAX) return false;
    out.bytes('b', PyBytes_AS_STRING(v), size_t(n));
    return true;
  }
  if (depth >= kMaxDepth) return false;
  if (t == &PyTuple_Type) {
    Py_ssize_t n = PyTuple_GET_SIZE(v);
    out.tagged('t', uint32_t(n));
    for (Py_ssize_t i = 0; i < n; ++i)
      if (!encode_member(PyTuple_GET_ITEM(v, i), out, depth + 1, key)) return false;
    return true;
  }
  if (key) return false;  // lists and dicts cannot be dict keys
  if (t == &PyList_Type) {
    // The items are exact builtin types, whose encoding runs no Python code,
    // so the list cannot change size under this loop.
    Py_ssize_t n = PyList_GET_SIZE(v);
    if (uint64_t(n) > UINT32_MAX) return false;
    out.tagged('l', uint32_t(n));
    for (Py_ssize_t i = 0; i < n; ++i)
      if (!encode_member(PyList_GET_ITEM(v, i), out, depth + 1, false)) return false;
    return true;
  }
  if (t == &PyDict_Type) {
    out.tagged('d', uint32_t(PyDict_GET_SIZE(v)));
    Py_ssize_t pos = 0;
    PyObject *k, *item;
    while (PyDict_Next(v, &pos, &k, &item))
      if (!encode_item(k, out, depth + 1, true) || !encode_item(item, out, depth + 1, false))
        return false;
    return true;
  }
  return false;
}

class Reader {
 public:
  Reader(const uint8_t* p, uint64_t n) : p_(p), end_(p + n) {}

  // One item; throws corrupt (or MemoryError) on malformed input.
  PyObject* item(int depth) {
    const uint8_t tag = byte();
    if (PyObject* scalar = scalar_item(tag)) return scalar;
    if (PyErr_Occurred()) return nullptr;
    if (depth >= kMaxDepth) throw_corrupt_value();
    switch (tag) {
      case 't':
      case 'l': {
        const bool tuple = tag == 't';
        uint32_t n = count(1);
        PyObject* seq = tuple ? PyTuple_New(n) : PyList_New(n);
        if (!seq) return nullptr;
        // Items are stored straight into the new sequence; a failure drops
        // it whole (its unfilled slots are NULL, which dealloc skips).
        PyObject** items = tuple ? &PyTuple_GET_ITEM(seq, 0) : PySequence_Fast_ITEMS(seq);
        for (uint32_t i = 0; i < n; ++i) {
          // Scalars, the common case of long sequences, without a call.
          PyObject* x = scalar_item(byte());
          if (!x) {
            if (PyErr_Occurred()) {
              Py_DECREF(seq);
              return nullptr;
            }
            --p_;  // a container: decode it in full
            x = guarded(seq, depth);
            if (!x) return nullptr;
          }
          items[i] = x;
        }
        return seq;
      }
      case 'd': {
        uint32_t n = count(2);
        PyObject* d = _PyDict_NewPresized(n);
        if (!d) return nullptr;
        for (uint32_t i = 0; i < n; ++i) {
          PyObject* k = guarded(d, depth);
          if (!k) return nullptr;
          PyObject* v;
          try {
            v = item(depth + 1);
          } catch (...) {
            Py_DECREF(k);
            Py_DECREF(d);
            throw;
          }
          // A key that is unhashable (a tuple holding a list, in bytes no
          // encoder wrote) fails here: a malformed value.
          int rc = v ? PyDict_SetItem(d, k, v) : -1;
          Py_DECREF(k);
          Py_XDECREF(v);
          if (rc < 0) {
            Py_DECREF(d);
            return nullptr;
          }
        }
        return d;
      }
      default:
        throw_corrupt_value();
    }
  }

  bool at_end() const { return p_ == end_; }

 private:
  // The object of a scalar item whose tag was just read; nullptr for a
  // container tag (no error set) or on failure (error set).  Throws corrupt
  // for a tag that is neither.
  PyObject* scalar_item(uint8_t tag) {
    switch (tag) {
      case 'f': return PyFloat_FromDouble(load<double>());
      case 'i': return PyLong_FromLongLong(load<long long>());
      case 's': {
        uint32_t n = load<uint32_t>();
        return str_from_utf8(reinterpret_cast<const char*>(take(n)), n);
      }
      case 'N': Py_RETURN_NONE;
      case 'T': Py_RETURN_TRUE;
      case 'F': Py_RETURN_FALSE;
      case 'b': {
        uint32_t n = load<uint32_t>();
        return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(take(n)), n);
      }
      case 't':
      case 'l':
      case 'd': return nullptr;
      default: throw_corrupt_value();
    }
  }
  // item(depth + 1), releasing `owner` if it fails.
  PyObject* guarded(PyObject* owner, int depth) {
    PyObject* x;
    try {
      x = item(depth + 1);
    } catch (...) {
      Py_DECREF(owner);
      throw;
    }
    if (!x) Py_DECREF(owner);
    return x;
  }
  [[gnu::always_inline]] uint8_t byte() { return *take(1); }
  template <class T>
  [[gnu::always_inline]] T load() {
    T x;
    std::memcpy(&x, take(sizeof(T)), sizeof(T));
    return x;
  }
  // A count of items of at least `min_bytes` each: never more than the bytes left allow.
  uint32_t count(uint32_t min_bytes) {
    uint32_t n = load<uint32_t>();
    if (uint64_t(n) * min_bytes > uint64_t(end_ - p_)) throw_corrupt_value();
    return n;
  }
  [[gnu::always_inline]] const uint8_t* take(uint64_t n) {
    if (__builtin_expect(uint64_t(end_ - p_) < n, 0)) throw_corrupt_value();
    const uint8_t* at = p_;
    p_ += n;
    return at;
  }
  const uint8_t* p_;
  const uint8_t* end_;
};

}  // namespace

bool encode_tree(PyObject* v, std::string& out) {
  out.assign(1, char(codec::kTree));
  bool ok;
  {
    Out writer(out);
    ok = encode_item(v, writer, 0, false);
  }
  if (!ok) out.clear();
  return ok;
}

nb::object decode_tree(const uint8_t* body, uint64_t n) {
  Reader r(body, n);
  PyObject* v = r.item(0);
  if (!v) {
    if (PyErr_ExceptionMatches(PyExc_MemoryError)) throw nb::python_error();
    // A malformed str or key in the bytes: report it as the corrupt value it is.
    PyErr_Clear();
    throw_corrupt_value();
  }
  nb::object out = nb::steal(v);
  if (!r.at_end()) throw_corrupt_value();
  return out;
}

}  // namespace sbx::py
