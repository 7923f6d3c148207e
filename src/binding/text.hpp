// text.hpp — str to UTF-8 and back on the hot paths (keys, str values, str
// items of the tree codec).
//
// Almost every key and short str value is ASCII.  CPython already keeps an
// ASCII str as its UTF-8 bytes, so encoding is a pointer; decoding an ASCII
// run is an allocation and a memcpy.  CPython's general codec
// (PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8) does the same work through
// several layers of dispatch: ~55 and ~250 instructions for a 16-byte str,
// against ~5 and ~70 here.  Anything else goes through CPython's codec,
// which also gives the errors (a lone surrogate, malformed bytes).
#pragma once

#include <Python.h>

#include <cstdint>
#include <cstring>

namespace sbx::py {

// The UTF-8 bytes of str `s` (borrowed from s), or nullptr with a Python
// error set when s holds a lone surrogate.
inline const char* utf8_of(PyObject* s, Py_ssize_t* n) {
  if (PyUnicode_IS_COMPACT_ASCII(s)) {  // an exact or subclassed str may be non-compact
    *n = PyUnicode_GET_LENGTH(s);
    return static_cast<const char*>(PyUnicode_DATA(s));
  }
  return PyUnicode_AsUTF8AndSize(s, n);
}

inline bool is_ascii(const char* p, size_t n) {
  uint64_t any = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    any |= w;
  }
  for (; i < n; ++i) any |= uint8_t(p[i]);
  return (any & 0x8080808080808080ULL) == 0;
}

// A new str decoded from UTF-8 (strictly), or nullptr with a Python error set.
// Only short runs take the fast path: it reads the bytes twice (check, then
// copy) where CPython's decoder copies while it checks, which wins from a
// few hundred bytes on (a 100 KB str read ~40% slower the fast way).
inline PyObject* str_from_utf8(const char* p, Py_ssize_t n) {
  constexpr Py_ssize_t kShortBytes = 256;
  if (n > kShortBytes || !is_ascii(p, size_t(n))) return PyUnicode_DecodeUTF8(p, n, "strict");
  PyObject* s = PyUnicode_New(n, 127);  // n == 0: the shared empty str
  if (s && n) std::memcpy(PyUnicode_1BYTE_DATA(s), p, size_t(n));
  return s;
}

}  // namespace sbx::py
