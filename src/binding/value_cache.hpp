// value_cache.hpp — a handle's cache of unpickled values (Core::get).
//
// Unpickling is most of the cost of reading a small pickled value (a 4-key
// dict: ~0.4 us of ~0.6 us), and most reads see a value that has not changed
// since this process last read it.  So each handle keeps the objects it
// unpickled, with the version (record stamp) they were read at, and answers a
// read from the cache when one lock-free probe of the key's version finds the
// same record still published.  A record is never modified after it is
// published and its stamp is never reused, so an equal version means an equal
// value: a read never returns a stale value after a write has completed (the
// probe is itself a linearizable read).
//
// A reader must never see another reader's mutation, so only values that
// cannot be mutated through the object returned are cached:
//   * immutable ones (str, int, float, complex, bool, None, bytes, and tuples
//     and frozensets of those) are returned as they are;
//   * a dict or a list whose members are all such immutable values is
//     returned as a fresh shallow copy, which shares nothing mutable;
//   * anything else (objects of other classes, nested containers) is not
//     cached: it is unpickled on every read, as before.
// Natively encoded scalars are cached only where decoding costs more than
// the probe: str and bytes of more than kMinStrBytes.  Guarded by the GIL,
// like the rest of Core.
#pragma once

#include <Python.h>
#include <nanobind/nanobind.h>

#include <cstdint>
#include <string>
#include <unordered_map>

namespace sbx::py {

class ValueCache {
 public:
  // Encoded values larger than this are not cached, and the whole cache is
  // dropped when the encoded bytes it stands for exceed kMaxTotalBytes.
  static constexpr uint64_t kMaxValueBytes = 64 << 10;
  static constexpr uint64_t kMaxTotalBytes = 64 << 20;
  // str and bytes values are cached only above this size (encoded bytes).
  static constexpr uint64_t kMinStrBytes = 256;

  enum class Copy : uint8_t { None, Dict, List };

  struct Entry {
    std::string key;
    uint64_t version = 0;
    nb::object value;
    Copy copy = Copy::None;
    uint64_t bytes = 0;
  };

  // The entry of this key, if one is cached: then one version probe tells
  // whether it is still current.  Valid until the cache next changes.
  const Entry* find(uint64_t hash, const char* key, size_t key_len) const {
    if (map_.empty()) return nullptr;
    auto it = map_.find(hash);
    if (it == map_.end() || it->second.key.compare(0, std::string::npos, key, key_len) != 0)
      return nullptr;
    return &it->second;
  }

  // What the caller gets for a current entry (a fresh copy if it is a container).
  static nb::object value_of(const Entry& e) { return for_caller(e.value, e.copy); }

  // Offers a value just unpickled from a record at `version`; returns what
  // the caller gets (a copy, if the cache keeps the object and it is a
  // container, so that the caller cannot change the cached one).
  nb::object offer(uint64_t hash, const char* key, size_t key_len, uint64_t version,
                   nb::object value, uint64_t encoded_bytes) {
    Copy copy;
    if (encoded_bytes > kMaxValueBytes || !cacheable(value.ptr(), &copy)) return value;
    if (total_bytes_ + encoded_bytes > kMaxTotalBytes) clear();
    Entry& e = map_[hash];
    total_bytes_ -= e.bytes;
    e.key.assign(key, key_len);
    e.version = version;
    e.value = value;
    e.copy = copy;
    e.bytes = encoded_bytes;
    total_bytes_ += encoded_bytes;
    return for_caller(e.value, copy);
  }

  void forget(uint64_t hash) {
    auto it = map_.find(hash);
    if (it == map_.end()) return;
    total_bytes_ -= it->second.bytes;
    map_.erase(it);
  }

  void clear() {
    map_.clear();
    total_bytes_ = 0;
  }
  bool empty() const { return map_.empty(); }

  // value itself, or a fresh shallow copy of it (a Dict or List entry).
  static nb::object for_caller(const nb::object& value, Copy copy) {
    PyObject* out;
    switch (copy) {
      case Copy::Dict: out = PyDict_Copy(value.ptr()); break;
      case Copy::List: out = PyList_GetSlice(value.ptr(), 0, PY_SSIZE_T_MAX); break;
      default: return value;
    }
    if (!out) throw nb::python_error();
    return nb::steal(out);
  }

  // Whether nothing reachable from o can be mutated (containers nested up
  // to `depth`), so that o may be handed to several callers.  Exact types
  // only: a subclass may add mutable state.
  static bool immutable(PyObject* o, int depth) {
    PyTypeObject* t = Py_TYPE(o);
    if (o == Py_None || t == &PyUnicode_Type || t == &PyLong_Type || t == &PyFloat_Type ||
        t == &PyBool_Type || t == &PyBytes_Type || t == &PyComplex_Type)
      return true;
    if (depth == 0) return false;
    if (t == &PyTuple_Type) {
      const Py_ssize_t n = PyTuple_GET_SIZE(o);
      if (n > 1024) return false;
      for (Py_ssize_t i = 0; i < n; ++i)
        if (!immutable(PyTuple_GET_ITEM(o, i), depth - 1)) return false;
      return true;
    }
    if (t == &PyFrozenSet_Type) {
      if (PySet_GET_SIZE(o) > 1024) return false;
      Py_ssize_t pos = 0;
      PyObject* item;
      Py_hash_t hash;
      while (_PySet_NextEntry(o, &pos, &item, &hash))
        if (!immutable(item, depth - 1)) return false;
      return true;
    }
    return false;
  }

  // Whether o may be kept and handed out again: as it is (*copy = None), or
  // as a fresh shallow copy (a dict or list of immutable values).  Also
  // used by the items() cache (items_cache.hpp).
  static bool cacheable(PyObject* o, Copy* copy) {
    constexpr int kDepth = 3;
    if (immutable(o, kDepth)) {
      *copy = Copy::None;
      return true;
    }
    if (Py_TYPE(o) == &PyDict_Type) {
      if (PyDict_GET_SIZE(o) > 4096) return false;
      Py_ssize_t pos = 0;
      PyObject *k, *v;
      while (PyDict_Next(o, &pos, &k, &v))
        if (!immutable(k, kDepth) || !immutable(v, kDepth)) return false;
      *copy = Copy::Dict;
      return true;
    }
    if (Py_TYPE(o) == &PyList_Type) {
      const Py_ssize_t n = PyList_GET_SIZE(o);
      if (n > 4096) return false;
      for (Py_ssize_t i = 0; i < n; ++i)
        if (!immutable(PyList_GET_ITEM(o, i), kDepth)) return false;
      *copy = Copy::List;
      return true;
    }
    return false;
  }

 private:
  std::unordered_map<uint64_t, Entry> map_;  // by the key's hash in the segment
  uint64_t total_bytes_ = 0;
};

}  // namespace sbx::py
