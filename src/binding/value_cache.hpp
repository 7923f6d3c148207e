// value_cache.hpp — a handle's cache of the values it read (Core::get).
//
// Most reads see a value that has not changed since this process last read
// it.  Each handle keeps the objects it decoded, with the version (record
// stamp) they were read at and the publish sequence of the key's stripe
// (Dict::publish_seq) loaded before that read.  A read answers from the cache:
//   * when the stripe's publish sequence is still that even number: no put
//     or erase of the stripe has published since, so the value is current.
//     This costs one load of a line that writers of the stripe alone write,
//     instead of the table slot and the record (two cache misses a read in a
//     large store), and no decoding or allocation.  A small str read again
//     from the cache costs ~95 ns here against ~200 ns decoded;
//   * else when one lock-free probe of the key's version finds the same
//     record still published.  A record is never modified after it is
//     published and its stamp is never reused, so an equal version means an
//     equal value.
// Either check is a linearizable read of the key, so a read never returns a
// stale value after a write has completed.  Entries are found by the key's
// 64-bit hash and hold the key itself, which the first check compares (the
// second compares versions, which are unique to one record of one key).
//
// A reader must never see another reader's mutation, so only values that
// cannot be mutated through the object returned are cached:
//   * immutable ones (str, int, float, complex, bool, None, bytes, and tuples
//     and frozensets of those) are returned as they are;
//   * a dict or a list whose members are all such immutable values goes to
//     one caller at a time: the cache keeps a pristine copy of it (a tuple
//     of a list's items; a private copy of a dict) and the container it
//     handed out last.  That container is handed out again only when the
//     cache holds its only reference (its last caller has let it go) and it
//     is provably unchanged: a list whose item pointers equal the pristine
//     tuple's (the tuple keeps those objects alive, so equal pointers mean
//     the same immutable items), a dict whose PEP 509 version tag is the one
//     it had when handed out (any change of a dict moves its tag).  Else the
//     caller gets a fresh shallow copy of the pristine one, which shares
//     nothing mutable.  So no caller ever holds a container that another
//     caller holds or has changed, and the common read loop (read, use,
//     drop) copies nothing: a cold 100-float list cost ~1.4 us to copy;
//   * anything else (arrays, objects of other classes, nested containers)
//     is not cached: it is decoded on every read, as before.
// The cost is the first read of each key by a handle: an entry, and an
// object the next read cannot reuse the memory of.
// Guarded by the GIL, like the rest of Core.
#pragma once

#include <Python.h>
#include <nanobind/nanobind.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "text.hpp"

namespace sbx::py {

class ValueCache {
 public:
  // Encoded values larger than this are not cached, and the whole cache is
  // dropped when the encoded bytes it stands for exceed kMaxTotalBytes.
  static constexpr uint64_t kMaxValueBytes = 64 << 10;
  static constexpr uint64_t kMaxTotalBytes = 64 << 20;

  enum class Copy : uint8_t { None, Dict, List };

  // A plain struct (owned references as raw pointers), so that growing the
  // entry vector copies bytes, with no move constructor or destructor run
  // per entry.  The references are taken in offer() and dropped in release().
  struct Entry {
    uint64_t hash;      // the key's hash in the segment
    uint64_t version;   // record stamp the value was read at
    // The key's stripe's publish sequence, read before a read that found
    // `version` published; odd: none (a hit needs an even one).
    uint64_t seq;
    PyObject* key;      // the exact str the entry was made for (owned)
    PyObject* value;    // Copy::None: the value; else the container handed out last (owned)
    PyObject* pristine; // List: a tuple of its items; Dict: a copy never handed out (owned or null)
    uint64_t handed_tag;  // Dict: value's version tag when it was handed out
    uint32_t bytes;       // encoded bytes (at most kMaxValueBytes)
    Copy copy;
  };
  static_assert(std::is_trivially_copyable_v<Entry>, "entries are moved with memcpy");

  // The entry cached under this key hash, if any (of this key or of another
  // with the same 64-bit hash: see holds_key).  Valid until the cache next
  // changes.
  Entry* find(uint64_t hash) {
    if (entries_.empty()) return nullptr;
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      const uint32_t at = index_[i];
      if (at == 0) return nullptr;
      Entry& e = entries_[at - 1];
      if (e.hash == hash) return &e;
    }
  }

  // Whether e was made for the key whose UTF-8 bytes are (p, n).  A version
  // probe needs no such check (versions are unique to one record of one key).
  static bool holds_key(const Entry& e, PyObject* key, const char* p, Py_ssize_t n) {
    PyObject* mine = e.key;
    if (mine == key) return true;
    Py_ssize_t m;
    const char* q = utf8_of(mine, &m);  // a key was encodable when it was stored
    return q && m == n && std::memcmp(p, q, size_t(n)) == 0;
  }

  // What the caller gets for a current entry: the value itself, or for a
  // container the one handed out last if nobody holds or has changed it,
  // else a fresh copy of the pristine one (see the top of this file).
  //
  // Making a copy allocates, which can run the cyclic GC and so any
  // finalizer, which can read through this handle and change the cache (add
  // entries, grow or clear the table): the copy works on references of its
  // own, and it becomes the entry's handed-out container only if the cache
  // did not change meanwhile (else `e` may be gone).
  nb::object value_of(Entry& e) {
    if (e.copy == Copy::None) return nb::borrow(e.value);
    if (e.copy == Copy::List ? list_reusable(e) : dict_reusable(e)) return nb::borrow(e.value);
    const uint64_t changes = changes_;
    const Copy copy = e.copy;
    nb::object pristine = nb::borrow(e.pristine);
    nb::object fresh = nb::steal(copy == Copy::List ? PySequence_List(pristine.ptr())
                                                    : PyDict_Copy(pristine.ptr()));
    if (!fresh.is_valid()) throw nb::python_error();
    if (changes == changes_) {
      PyObject* old = e.value;
      e.value = nb::object(fresh).release().ptr();
      if (copy == Copy::Dict) e.handed_tag = dict_tag(e.value);
      Py_DECREF(old);  // a dict or list of immutable values: no finalizer runs
    }
    return fresh;
  }

  // Offers a value just read for `key` (an exact str) from a record at
  // `version`, with the publish sequence loaded before that read; returns
  // what the caller gets: the value itself (a container is handed out as
  // the entry's current one, its pristine copy taken first).
  nb::object offer(uint64_t hash, PyObject* key, uint64_t version, uint64_t seq,
                   nb::object value, uint64_t encoded_bytes) {
    Copy copy;
    if (encoded_bytes > kMaxValueBytes || !PyUnicode_CheckExact(key) ||
        !cacheable(value.ptr(), &copy))
      return value;
    nb::object pristine;
    if (copy == Copy::List) pristine = nb::steal(PyList_AsTuple(value.ptr()));
    if (copy == Copy::Dict) pristine = nb::steal(PyDict_Copy(value.ptr()));
    if (copy != Copy::None && !pristine.is_valid()) throw nb::python_error();
    if (total_bytes_ + encoded_bytes > kMaxTotalBytes) clear();
    Entry& e = slot_for(hash);
    const Entry old = e;  // its references are dropped once e is whole again
    total_bytes_ -= old.bytes;
    e.version = version;
    e.seq = seq;
    e.key = nb::borrow(key).release().ptr();
    e.value = nb::object(value).release().ptr();
    e.pristine = pristine.release().ptr();
    e.handed_tag = copy == Copy::Dict ? dict_tag(e.value) : 0;
    e.copy = copy;
    e.bytes = uint32_t(encoded_bytes);
    total_bytes_ += encoded_bytes;
    release(old);  // exact strs and immutable values: no finalizer runs
    return value;
  }

  // Admission of values that decode about as fast as the cache can keep
  // them (Core::get: natively coded str, bytes, int and float of at most
  // Core::kSmallValueBytes).  Keeping one costs the read that keeps it about
  // twice a plain read (an entry, and an object whose memory the next read
  // cannot reuse) and makes every later read ~2x faster, so a value read only once should not be kept: it
  // is admitted on its second read.  A bitmap indexed by key hash remembers
  // the keys read (a "doorkeeper", as in TinyLFU): a first read sets a bit,
  // and a read that finds its bit set is admitted.  The bitmap is cleared
  // once an eighth of its bits were set, so a scan of any length keeps at
  // most about an eighth of what it reads (other keys' bits), and a key read
  // again within the last ~128K first reads is kept.
  bool seen_before(uint64_t hash) {
    if (seen_.empty()) seen_.assign(kSeenBits / 64, 0);
    const uint64_t bit = (hash >> 20) & (kSeenBits - 1);  // bits the index does not use first
    uint64_t& word = seen_[bit >> 6];
    const uint64_t mask = uint64_t(1) << (bit & 63);
    if (word & mask) return true;
    word |= mask;
    if (++seen_count_ >= kSeenBits / 8) {
      std::fill(seen_.begin(), seen_.end(), 0);
      seen_count_ = 0;
    }
    return false;
  }

  // Drops every entry.  The entries are taken out first and released after,
  // so that whatever the releases run finds an empty, consistent cache.
  void clear() {
    ++changes_;
    std::vector<Entry> gone;
    gone.swap(entries_);
    index_.clear();
    index_.shrink_to_fit();
    mask_ = 0;
    total_bytes_ = 0;
    for (const Entry& e : gone) release(e);
  }

  ~ValueCache() { clear(); }
  ValueCache() = default;
  ValueCache(const ValueCache&) = delete;
  ValueCache& operator=(const ValueCache&) = delete;

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
  // The list handed out last, if only the cache holds it and its items are
  // still the pristine ones (compared as pointers: the tuple keeps them alive).
  static bool list_reusable(const Entry& e) {
    PyObject* list = e.value;
    PyObject* items = e.pristine;
    const Py_ssize_t n = PyTuple_GET_SIZE(items);
    return Py_REFCNT(list) == 1 && PyList_GET_SIZE(list) == n &&
           (n == 0 || std::memcmp(&PyList_GET_ITEM(list, 0), &PyTuple_GET_ITEM(items, 0),
                                  size_t(n) * sizeof(PyObject*)) == 0);
  }
  // The dict handed out last, if only the cache holds it and its version tag
  // has not moved.  PEP 509's ma_version_tag changes on every change of a
  // dict up to Python 3.11; later versions deprecate it, so there every read
  // gets a fresh copy.
  static bool dict_reusable(const Entry& e) {
#if PY_VERSION_HEX < 0x030C0000
    return Py_REFCNT(e.value) == 1 && dict_tag(e.value) == e.handed_tag;
#else
    (void)e;
    return false;
#endif
  }
  static uint64_t dict_tag(PyObject* d) {
#if PY_VERSION_HEX < 0x030C0000
    return uint64_t(reinterpret_cast<PyDictObject*>(d)->ma_version_tag);
#else
    (void)d;
    return 0;
#endif
  }

  // The entry of this hash, which the caller (re)fills: the existing one, or
  // a new one with only its hash set.  Past kMaxEntries the cache starts
  // over.  Either way the cache changes (value_of): an entry is rewritten,
  // or appending may move every entry.
  Entry& slot_for(uint64_t hash) {
    ++changes_;
    if (Entry* e = find(hash)) return *e;
    if (entries_.size() >= kMaxEntries) clear();
    entries_.push_back(Entry{hash, 0, 1, nullptr, nullptr, nullptr, 0, 0, Copy::None});
    if (entries_.size() * 2 > index_.size()) {
      rebuild_index();
    } else {
      place(entries_.size() - 1);
    }
    return entries_.back();
  }
  // The references an entry held (none for a new one).
  static void release(const Entry& e) {
    Py_XDECREF(e.key);
    Py_XDECREF(e.value);
    Py_XDECREF(e.pristine);
  }
  // Puts entries_[n] in the index (linear probing; the index is at most
  // half full, so a free position is always found).
  void place(size_t n) {
    size_t i = entries_[n].hash & mask_;
    while (index_[i] != 0) i = (i + 1) & mask_;
    index_[i] = uint32_t(n + 1);
  }
  void rebuild_index() {
    index_.assign(std::max<size_t>(1024, index_.size() * 2), 0);
    mask_ = index_.size() - 1;
    for (size_t n = 0; n < entries_.size(); ++n) place(n);
  }

  // Entries in insertion order, and an open-addressing index of 32-bit
  // positions into them (linear probing, at most half full), as CPython's
  // compact dict does.  The index is small (4 bytes a position, where a
  // table of the 56-byte entries themselves took 3.5 MB for 20,000 values
  // and more cache misses a lookup), and growing it constructs and moves no
  // entries (that growth cost ~560 instructions a new entry).
  // Entries are never removed one by one, so no tombstones are needed.
  static constexpr size_t kMaxEntries = size_t(1) << 19;
  std::vector<Entry> entries_;
  std::vector<uint32_t> index_;  // 0: free, else 1 + a position in entries_; a power of two long
  size_t mask_ = 0;
  uint64_t total_bytes_ = 0;
  uint64_t changes_ = 0;  // moves whenever an entry may have moved or changed (value_of)
  static constexpr uint64_t kSeenBits = uint64_t(1) << 20;  // 128 KiB (see seen_before)
  std::vector<uint64_t> seen_;
  uint64_t seen_count_ = 0;
};

}  // namespace sbx::py
