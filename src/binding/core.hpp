// core.hpp — SharedDictCore, the native handle: one sbx::Dict, the use count
// that lets close() run while other threads are inside an operation, and the
// operations themselves (argument conversion and the GIL; the codec is in
// values.hpp, the read-modify-write decisions in update.hpp).
#pragma once

#include <pthread.h>
#include <unistd.h>

#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "inspect.hpp"
#include "update.hpp"
#include "values.hpp"
#include "items_cache.hpp"
#include "value_cache.hpp"
#include "views.hpp"

namespace sbx::py {

class Core {
 public:
  // get(): a cached value whose stripe has published since is checked with a
  // version probe before it is copied again only if it is larger than this
  // (encoded bytes); a smaller one is simply read again, in one probe.
  static constexpr uint64_t kSmallValueBytes = 256;

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
    // Every Use begins and ends with the GIL held (a section that lets the
    // GIL go is always nested inside one), and so does close(): the GIL
    // orders all updates of state_, which are therefore plain loads and
    // stores.  An atomic read-modify-write here cost two locked
    // instructions on every get and set.
    explicit Use(Core* c) : c_(c) {
      uint64_t prev = c_->state_.load(std::memory_order_relaxed);
      if (prev & 1) throw ClosedError{c_->name_};
      c_->state_.store(prev + 2, std::memory_order_relaxed);
    }
    ~Use() { leave(); }
    sbx::Dict* operator->() const { return c_->dict_.get(); }
    sbx::Dict& dict() const { return *c_->dict_; }

   private:
    void leave() {
      uint64_t now = c_->state_.load(std::memory_order_relaxed) - 2;
      c_->state_.store(now, std::memory_order_relaxed);
      if (now == 1) c_->release();  // the last one out of a closed handle
    }
    Core* c_;
  };

  void close() {
    value_cache_.clear();  // the GIL is held: no get() is touching it
    items_cache_.clear();
    uint64_t prev = state_.load(std::memory_order_relaxed);  // GIL-ordered (see Use)
    state_.store(prev | 1, std::memory_order_relaxed);
    if (!(prev & 1) && (prev >> 1) == 0) release();
  }
  bool closed() const { return state_.load(std::memory_order_acquire) & 1; }

  // A value this handle read before comes from value_cache_ while it is
  // still the one published (see value_cache.hpp).
  nb::object get(PyObject* key, bool* found) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    sbx::KeyRef k = d->key(kb.data, size_t(kb.len));
    // Loaded before any read of the key (acquire), so that an entry made or
    // confirmed by the reads below is current while it stays the same.
    const uint64_t seq = d->publish_seq(k);
    // The probe runs no Python and keeps the GIL, so `cached` stays valid
    // until the read below.
    if (ValueCache::Entry* cached = value_cache_.find(k.hash)) {
      if (cached->seq == seq && !(seq & 1) &&
          ValueCache::holds_key(*cached, key, kb.data, kb.len)) {
        *found = true;
        return value_cache_.value_of(*cached);
      }
      // A large value is worth a version probe before copying it; a small
      // one is read at once (one probe), and not decoded if it is the same.
      if (cached->bytes > kSmallValueBytes) {
        uint64_t version;
        if (!d->version(k, &version)) {
          *found = false;
          return nb::object();
        }
        if (version == cached->version) {
          cached->seq = seq;
          *found = true;
          return value_cache_.value_of(*cached);
        }
      }
    }
    Sink sink(allow_pickle_);
    uint64_t stamp = 0;
    *found = d->get(k, sink, &stamp);
    if (!*found) return nb::object();
    const uint64_t version = stamp >> 1;
    ValueCache::Entry* cached = value_cache_.find(k.hash);
    if (cached && cached->version == version) {  // versions are unique to one record of one key
      cached->seq = seq;
      return value_cache_.value_of(*cached);
    }
    nb::object v = sink.decode();
    if (v.ptr() == Py_None || v.ptr() == Py_True || v.ptr() == Py_False) return v;
    const uint8_t tag = sink.tag();
    const bool cheap = (tag == codec::kStr || tag == codec::kBytes || tag == codec::kInt64 ||
                        tag == codec::kFloat64) &&
                       sink.stored_len() <= kSmallValueBytes;
    if (cheap && !cached && !value_cache_.seen_before(k.hash)) return v;
    return value_cache_.offer(k.hash, key, version, seq, std::move(v), sink.stored_len());
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
    d->prefetch_for_put(k);  // their misses overlap the encoding
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

  // The keys as a tuple.  The last tuple built is kept with the per-stripe
  // change sequences it was built at: while no key has been inserted or
  // deleted since (one read of each stripe's sequence), it is the answer, for
  // keys_atomic() too (see Dict::key_set_unchanged).  Overwrites do not move
  // the sequences, so iterating a dict whose values change rebuilds nothing.
  // A tuple, so that it can be handed out without a copy: iter() over it is
  // `for k in d`, and nothing reachable from it can change it.  Only tuples of
  // up to 262,144 keys are kept (their strings stay alive with the handle).
  // Guarded by the GIL.
  nb::object key_tuple(bool atomic) {
    {
      Use d(this);
      if (keys_cache_.is_valid() && d->key_set_unchanged(keys_cache_seqs_)) return keys_cache_;
    }
    std::vector<std::string> ks;
    std::vector<uint64_t> seqs;
    {
      Use d(this);
      ks = d->keys(atomic, &seqs);
    }
    nb::object out = nb::steal(PyTuple_New(Py_ssize_t(ks.size())));
    if (!out.is_valid()) throw nb::python_error();
    for (size_t i = 0; i < ks.size(); ++i) {
      PyObject* o = str_from_utf8(ks[i].data(), Py_ssize_t(ks[i].size()));
      if (!o) throw nb::python_error();
      PyTuple_SET_ITEM(out.ptr(), Py_ssize_t(i), o);
    }
    constexpr size_t kMaxCachedKeys = 1 << 18;
    if (ks.size() <= kMaxCachedKeys) {
      keys_cache_ = out;
      keys_cache_seqs_ = std::move(seqs);
    } else {
      keys_cache_ = nb::object();
    }
    return out;
  }

  // The keys as a new list (keys_atomic(), and callers that keep them).
  nb::list keys(bool atomic) {
    nb::object keys = key_tuple(atomic);
    return nb::steal<nb::list>(PySequence_List(keys.ptr()));
  }

  // An iterator over the keys (`for k in d`, keys()): no copy of the key list.
  nb::object iter_keys() {
    nb::object keys = key_tuple(false);
    PyObject* it = PyObject_GetIter(keys.ptr());
    if (!it) throw nb::python_error();
    return nb::steal(it);
  }

  // The items of stripe i as (key, value) pairs: values of up to
  // kBatchValueBytes are copied under the stripe lock and decoded after it;
  // a larger value is read afterwards by get() (one copy, straight into its
  // object), and skipped if it was deleted meanwhile.  The copy buffers are
  // kept between calls (items() walks every stripe in turn), so they stop
  // growing after the first stripes.  While the stripe's write mark has not
  // moved, the pairs built last time are the answer (items_cache.hpp).
  // Guarded by the GIL.
  nb::list stripe_items(uint32_t i) {
    {
      Use d(this);
      if (i < stripes_) {
        nb::object cached = items_cache_.find(i, d->stripe_write_mark(i));
        if (cached.is_valid()) return nb::steal<nb::list>(cached.release());
      }
    }
    // Taken out of the member, so that another thread (get() below may
    // release the GIL for a large value) never shares it; put back at the end.
    ItemsCopy copy = std::move(items_copy_);
    copy.clear();
    uint64_t mark;
    {
      Use d(this);
      mark = d->visit_stripe(i, copy);
    }
    const size_t n = copy.key_end.size();
    nb::object out = nb::steal(PyList_New(Py_ssize_t(n)));
    if (!out.is_valid()) throw nb::python_error();
    ItemsCache::Builder keep(n);
    Py_ssize_t filled = 0;
    uint64_t kpos = 0, vpos = 0;
    for (size_t j = 0; j < n; ++j) {
      PyObject* key = str_from_utf8(copy.keys.data() + kpos, Py_ssize_t(copy.key_end[j] - kpos));
      if (!key) throw nb::python_error();
      nb::object k = nb::steal(key);
      kpos = copy.key_end[j];
      nb::object value;
      if (copy.value_end[j] == 0) {
        keep.refuse();  // read after the visit: not part of what the mark stands for
        bool found = false;
        value = get(key, &found);
        if (!found) continue;  // deleted since the stripe was walked
      } else {
        const auto* v = reinterpret_cast<const uint8_t*>(copy.values.data()) + vpos;
        value = decode_copied(v, copy.value_end[j] - vpos, copy.value_off[j]);
        vpos = copy.value_end[j];
        keep.value(size_t(filled), value.ptr());
      }
      PyObject* pair = PyTuple_New(2);
      if (!pair) throw nb::python_error();
      PyTuple_SET_ITEM(pair, 0, k.release().ptr());
      PyTuple_SET_ITEM(pair, 1, value.release().ptr());
      PyList_SET_ITEM(out.ptr(), filled++, pair);
    }
    if (filled < Py_ssize_t(n) && PyList_SetSlice(out.ptr(), filled, Py_ssize_t(n), nullptr) < 0)
      throw nb::python_error();
    const uint64_t value_bytes = copy.values.size();
    items_copy_ = std::move(copy);
    if (i < stripes_) {
      items_cache_.offer(i, mark, out, std::move(keep), value_bytes);
      // The caller gets its own list (and its own copies of containers).
      nb::object mine = items_cache_.find(i, mark);
      if (mine.is_valid()) return nb::steal<nb::list>(mine.release());
    }
    return nb::steal<nb::list>(out.release());
  }

  // Zero-copy (views.hpp).  The value of key, in place: a read-only ndarray
  // or memoryview whose base (a PinnedBuffer) holds the record's pin.
  nb::object view(PyObject* key) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    sbx::KeyRef k = d->key(kb.data, size_t(kb.len));
    ViewCheck check;
    sbx::Pin pin;
    bool found;
    try {
      found = d->pin(k, check, &pin);
    } catch (const NotViewable& nv) {
      std::string msg = std::string("view() returns arrays and bytes without copying; the value "
                                    "of this key is ") + tag_name(nv.tag) + ": use d[key]";
      throw nb::type_error(msg.c_str());
    }
    if (!found) {
      PyErr_SetObject(PyExc_KeyError, key);
      throw nb::python_error();
    }
    const bool is_bytes = check.tag == codec::kBytes;
    uint8_t* data = is_bytes ? pin.value + 1 : pin.value + check.array.data_at;
    uint64_t len = is_bytes ? pin.value_len - 1 : check.array.nbytes;
    nb::object holder = own_pin(pin, data, len, false);
    if (is_bytes) return nb::steal(PyMemoryView_FromObject(holder.ptr()));
    const ArrayHeader& h = check.array;
    return array_over(holder, h.descr, h.descr_len, h.shape, h.ndim, h.fortran);
  }

  // A writable block for key's next value, filled in place and published by
  // publish_built (SharedDict.create_array / create_bytes).  descr is None
  // for bytes; else the array's descr, shape and order.
  nb::object begin_build(PyObject* key, nb::handle descr, nb::handle shape, bool fortran,
                         uint64_t nbytes) {
    Use d(this);
    KeyBytes kb = key_bytes(key);
    sbx::KeyRef k = d->key(kb.data, size_t(kb.len));
    const bool is_bytes = descr.is_none();
    std::string head;
    if (is_bytes) {
      head.assign(1, char(codec::kBytes));
    } else {
      nb::bytes db = nb::cast<nb::bytes>(descr);
      head = array_head(db.c_str(), db.size(), shape, fortran, nbytes);
    }
    HeadSource src(std::move(head), !is_bytes, nbytes);
    sbx::Pin pin;
    d->begin_build(k, src, nbytes, &pin);
    return own_pin(pin, pin.value + pin.data_at, nbytes, true);
  }

  // Publishes the block of `buffer` as key's value (atomically); the buffer
  // then pins the published record and is read-only.
  void publish_built(PyObject* key, PinnedBuffer& buffer) {
    Use d(this);
    if (&buffer.dict() != dict_.get())
      throw nb::value_error("this block belongs to another SharedDict handle");
    KeyBytes kb = key_bytes(key);
    d->publish_built(d->key(kb.data, size_t(kb.len)), buffer.pin());
    buffer.make_read_only();
  }

  nb::dict stats() {
    sbx::Stats st;
    sbx::PinStats pins;
    {
      Use d(this);
      pins = d->pin_stats();  // first: it frees dead processes' pins, which st counts
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
    r["pins"] = pins.pins;
    r["pinned_bytes"] = pins.pinned_bytes;
    r["max_pins_per_process"] = pins.max_pins_per_process;
    nb::dict holders;
    for (const sbx::PinHolder& h : pins.holders) holders[nb::int_(h.pid)] = h.pins;
    r["pin_holders"] = holders;
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
  // Wraps a pin this thread just took in a PinnedBuffer, which releases it
  // when it dies (even if making it fails half way).
  nb::object own_pin(const sbx::Pin& pin, uint8_t* data, uint64_t len, bool writable) {
    std::unique_ptr<PinnedBuffer> b;
    try {
      b = std::make_unique<PinnedBuffer>(dict_, pin, data, len, writable);
    } catch (...) {
      dict_->unpin(pin);
      throw;
    }
    nb::object holder = nb::cast(b.get(), nb::rv_policy::take_ownership);
    b.release();
    return holder;
  }

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

  // Shared with the views (PinnedBuffer): the mapping outlives close() while
  // any view lives.
  std::shared_ptr<sbx::Dict> dict_;
  // The values of one stripe, copied under its lock (stripe_items).
  struct ItemsCopy : sbx::ItemVisitor {
    std::string keys, values;
    std::vector<uint64_t> key_end, value_end, value_off;  // value_end 0: fetch later
    void clear() {
      keys.clear();
      values.clear();
      key_end.clear();
      value_end.clear();
      value_off.clear();
    }
    void item(const char* k, uint64_t kl, const uint8_t* v, uint64_t vl, uint64_t voff) override {
      keys.append(k, kl);
      key_end.push_back(keys.size());
      if (vl <= kBatchValueBytes) {
        values.append(reinterpret_cast<const char*>(v), vl);
        value_end.push_back(values.size());
      } else {
        value_end.push_back(0);
      }
      value_off.push_back(voff);
    }
  };

  // A value copied out of the segment (stable): str, int, float, bool and
  // None are made directly; the rest through a Sink.
  nb::object decode_copied(const uint8_t* v, uint64_t n, uint64_t segment_off) {
    if (n == 9 && v[0] == codec::kInt64) {
      long long x;
      std::memcpy(&x, v + 1, 8);
      return nb::steal(PyLong_FromLongLong(x));
    }
    if (n >= 1 && v[0] == codec::kStr) {
      PyObject* str = str_from_utf8(reinterpret_cast<const char*>(v + 1), Py_ssize_t(n - 1));
      if (!str) throw nb::python_error();
      return nb::steal(str);
    }
    Sink sink(allow_pickle_);
    sink.take(v, n, segment_off, true);
    return sink.decode();
  }

  ItemsCopy items_copy_;                   // see stripe_items()
  nb::object keys_cache_;                  // a tuple; see key_tuple()
  ValueCache value_cache_;                 // see get()
  ItemsCache items_cache_;                 // see stripe_items()
  std::vector<uint64_t> keys_cache_seqs_;
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
inline Core* core_of(PyObject* self) {
  if (!nb::inst_ready(nb::handle(self)))
    throw nb::type_error(
        "this SharedDict is not initialised: its __init__ never ran (a subclass's "
        "__init__ must call super().__init__(...))");
  return nb::inst_ptr<Core>(nb::handle(self));
}

}  // namespace sbx::py
