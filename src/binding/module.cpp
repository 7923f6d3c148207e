// module.cpp — sharedbox._core: the nanobind binding of sbx::Dict (the
// module and the type slots; each other concern has its own file: common.hpp,
// errors.cpp, values.hpp/.cpp, inspect.hpp/.cpp, update.hpp, core.hpp).
//
// Thin on purpose: key conversion, the value codec (codec.hpp), the GIL, and
// a use count that lets close() run while other threads are inside an
// operation.  Two rules keep the GIL and the shared locks from deadlocking:
//   1. No Python code runs while a shared lock is held (a value read under a
//      lock is copied into a private buffer and decoded after unlocking).
//   2. A thread may block on a shared lock while holding the GIL, because by
//      rule 1 the lock's holder never waits for the GIL.
// The hot dunder methods are installed as type slots (no method lookup).
#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstddef>

#include "core.hpp"

namespace nb = nanobind;
using namespace nb::literals;
using namespace sbx::py;

namespace {
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

int pinned_getbuffer(PyObject* self, Py_buffer* view, int flags) {
  if (!nb::inst_ready(nb::handle(self))) {
    PyErr_SetString(PyExc_BufferError, "this PinnedBuffer is not initialised");
    return -1;
  }
  return nb::inst_ptr<PinnedBuffer>(nb::handle(self))->get_buffer(self, view, flags);
}

void pinned_releasebuffer(PyObject* self, Py_buffer*) {
  nb::inst_ptr<PinnedBuffer>(nb::handle(self))->release_buffer();
}

PyType_Slot pinned_slots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(pinned_getbuffer)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(pinned_releasebuffer)},
    {0, nullptr},
};

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

  m.def("_set_error_types", &register_error_types);
  m.def("_set_codec", [](nb::object dumps, nb::object loads, nb::object array_header,
                         nb::object array_new, nb::object array_dtype) {
    g.array_dtype = array_dtype.inc_ref().ptr();
    g.pickle_dumps = dumps.inc_ref().ptr();
    g.pickle_loads = loads.inc_ref().ptr();
    nb::module_ pickle = nb::module_::import_("pickle");
    nb::module_ codec_module = nb::module_::import_("sharedbox._codec");
    g.c_dumps = pickle.attr("dumps").inc_ref().ptr();
    g.c_loads = pickle.attr("loads").inc_ref().ptr();
    g.protocol = codec_module.attr("PICKLE_PROTOCOL").inc_ref().ptr();
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

  m.def("_refcounts",
        [](nb::handle a, nb::handle b) { return std::make_pair(Py_REFCNT(a.ptr()), Py_REFCNT(b.ptr())); },
        "a"_a, "b"_a,
        "The reference counts of a and b (create_array's check that no view of its array "
        "outlives the with-block).");

  nb::class_<PinnedBuffer>(m, "PinnedBuffer", nb::type_slots(pinned_slots),
                           "Shared memory that a zero-copy view or a block being built keeps "
                           "pinned; the base object of their arrays and memoryviews.")
      .def_prop_ro("exports", &PinnedBuffer::exports, "Buffers exported from it now.")
      .def_prop_ro("writable", &PinnedBuffer::writable,
                   "True while the block is being built (create_array).")
      .def("_make_read_only", &PinnedBuffer::make_read_only,
           "Refuse writable buffers from now on (a block whose build was abandoned).");

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
      .def("_iter_keys", &Core::iter_keys)
      .def("_value_info", [](Core& c, nb::handle key) { return c.value_info(key.ptr()); },
           "key"_a.none(), "(type, stored bytes, dtype descr, shape) of key's value, or None.")
      .def("_stats", &Core::stats)
      .def("_get_raw", [](Core& c, nb::handle key) { return c.get_raw(key.ptr()); },
           "key"_a.none(), "The encoded bytes of key's value (canonical form), or None.")
      .def("_put_raw",
           [](Core& c, nb::handle key, const nb::bytes& data) { c.put_raw(key.ptr(), data); },
           "key"_a.none(), "data"_a, "Store encoded bytes (from _get_raw or encode_value) as key's value.")
      .def("_check_integrity", &Core::check)
      .def("_stripe_items", &Core::stripe_items, "stripe"_a)
      .def("view", [](Core& c, nb::handle key) { return c.view(key.ptr()); }, "key"_a.none(),
           "The value of key without copying it: a read-only numpy.ndarray for an array, a\n"
           "read-only memoryview for bytes.\n\n"
           "The view reads the record in shared memory and pins it: as long as any object\n"
           "uses that memory (the array, slices of it, buffers made from it), the record's\n"
           "memory is not reused, so the view never changes, even when other processes\n"
           "overwrite or delete the key (they and every later reader see the new value).\n"
           "A record replaced while pinned stays counted in bytes_used until its last view\n"
           "is gone (get_stats()['pinned_bytes']).  close() keeps the mapping while views\n"
           "live.\n\n"
           "Raises KeyError (absent), TypeError (another value type: use d[key]; or a key\n"
           "that is not a str), TooManyViewsError (this process holds\n"
           "max_pins_per_process pins), SharedDictClosedError.")
      .def("_begin_build",
           [](Core& c, nb::handle key, nb::handle descr, nb::handle shape, bool fortran,
              uint64_t nbytes) { return c.begin_build(key.ptr(), descr, shape, fortran, nbytes); },
           "key"_a.none(), "descr"_a.none(), "shape"_a.none(), "fortran"_a, "nbytes"_a)
      .def("_publish_built",
           [](Core& c, nb::handle key, PinnedBuffer& b) { c.publish_built(key.ptr(), b); },
           "key"_a.none(), "buffer"_a)
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
