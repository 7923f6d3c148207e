// items_cache.hpp — a handle's cache of each stripe's (key, value) pairs
// (Core::stripe_items, which items() and values() walk a stripe at a time).
//
// Building a stripe's pairs takes its lock, copies every record and decodes
// every key and value: ~200 ns a pair, against ~14 ns for a dict's items().
// Most walks of a dict find most stripes as the last walk left them, so each
// handle keeps the pairs it built for a stripe with the stripe's write mark
// at that moment (Dict::stripe_write_mark: it moves before any put or erase
// of the stripe becomes visible).  A walk that reads the same mark again
// gets the same pairs: no write to that stripe has been published or
// completed since, so they are still every item of the stripe, each with its
// current value.  A stale pair is therefore never returned after a write has
// completed, nor after this process has seen the write's effect.
//
// A reader must never see another reader's mutation: a pair is reused as it
// is only when its value is immutable (ValueCache::cacheable); a dict or a
// list of immutable values is handed out as a fresh shallow copy in a fresh
// pair; a stripe holding any other value (or a value too large to have been
// copied under the lock) is not kept.  Bounded by kMaxPairs pairs and
// kMaxBytes encoded value bytes over all stripes.  Guarded by the GIL.
#pragma once

#include <Python.h>
#include <nanobind/nanobind.h>

#include <cstdint>
#include <vector>

#include "value_cache.hpp"

namespace sbx::py {

namespace nb = nanobind;

class ItemsCache {
 public:
  static constexpr uint64_t kMaxPairs = uint64_t(1) << 18;
  static constexpr uint64_t kMaxBytes = uint64_t(64) << 20;

  // A new list of stripe i's pairs if they were cached at this write mark,
  // else an invalid object.
  // The allocations below can run the cyclic GC and so a finalizer that
  // walks this handle and replaces the entry: they work on copies of what
  // they need from it, taken first.
  nb::object find(uint32_t stripe, uint64_t mark) const {
    if (stripe >= entries_.size()) return nb::object();
    const Entry& e = entries_[stripe];
    if (!e.pairs.is_valid() || e.mark != mark) return nb::object();
    const nb::object pairs = e.pairs;
    const std::vector<uint32_t> copied = e.copied;
    const std::vector<ValueCache::Copy> copy_kind = e.copy_kind;
    PyObject* out = PyList_GetSlice(pairs.ptr(), 0, PY_SSIZE_T_MAX);
    if (!out) throw nb::python_error();
    nb::object list = nb::steal(out);
    for (uint32_t j : copied) {  // fresh containers in fresh pairs
      PyObject* pair = PyList_GET_ITEM(out, j);
      nb::object value = ValueCache::for_caller(
          nb::borrow(PyTuple_GET_ITEM(pair, 1)), copy_kind[j]);
      PyObject* fresh = PyTuple_Pack(2, PyTuple_GET_ITEM(pair, 0), value.ptr());
      if (!fresh) throw nb::python_error();
      PyList_SetItem(out, j, fresh);  // steals fresh, drops the shared pair
    }
    return list;
  }

  // Whether a stripe's pairs may be kept: asks each value in turn.
  class Builder {
   public:
    explicit Builder(size_t n) : kinds_(n, ValueCache::Copy::None) {}
    // Value j of the stripe; returns false once the stripe cannot be kept.
    bool value(size_t j, PyObject* v) {
      if (!ok_) return false;
      ValueCache::Copy copy;
      if (!ValueCache::cacheable(v, &copy)) return ok_ = false;
      kinds_[j] = copy;
      if (copy != ValueCache::Copy::None) copied_.push_back(uint32_t(j));
      return true;
    }
    void refuse() { ok_ = false; }
    bool ok() const { return ok_; }

   private:
    friend class ItemsCache;
    std::vector<ValueCache::Copy> kinds_;
    std::vector<uint32_t> copied_;
    bool ok_ = true;
  };

  // Keeps `pairs` (the list just built, before the caller gets its copy) as
  // stripe i's at `mark`, if the builder accepted every value and the bounds
  // allow; else forgets whatever stripe i had.
  void offer(uint32_t stripe, uint64_t mark, const nb::object& pairs, Builder&& built,
             uint64_t value_bytes) {
    if (stripe >= entries_.size()) entries_.resize(size_t(stripe) + 1);
    Entry& e = entries_[stripe];
    pairs_ -= e.count;
    bytes_ -= e.bytes;
    e = Entry{};
    const uint64_t n = uint64_t(PyList_GET_SIZE(pairs.ptr()));
    if (!built.ok() || pairs_ + n > kMaxPairs || bytes_ + value_bytes > kMaxBytes) return;
    e.pairs = pairs;
    e.mark = mark;
    e.count = n;
    e.bytes = value_bytes;
    if (!built.copied_.empty()) {
      e.copied = std::move(built.copied_);
      e.copy_kind = std::move(built.kinds_);
    }
    pairs_ += n;
    bytes_ += value_bytes;
  }

  void clear() {
    entries_.clear();
    pairs_ = bytes_ = 0;
  }

 private:
  struct Entry {
    nb::object pairs;  // list of (key, value) tuples, never handed out itself
    uint64_t mark = 0;
    uint64_t count = 0, bytes = 0;
    std::vector<uint32_t> copied;                // pairs whose value is copied per walk
    std::vector<ValueCache::Copy> copy_kind;     // by pair (only if `copied` is non-empty)
  };
  std::vector<Entry> entries_;  // by stripe
  uint64_t pairs_ = 0, bytes_ = 0;
};

}  // namespace sbx::py
