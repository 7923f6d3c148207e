// errors.cpp — engine errors and closed handles as Python exceptions, and
// str keys as the engine's UTF-8 bytes.
#include "common.hpp"

namespace sbx::py {

Registry g;

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


KeyBytes key_bytes(PyObject* key) {
  if (!PyUnicode_Check(key)) {
    std::string msg = std::string("SharedDict keys must be str, not ") + Py_TYPE(key)->tp_name;
    throw nb::type_error(msg.c_str());
  }
  Py_ssize_t n;
  const char* p = utf8_of(key, &n);
  if (!p) {
    nb::python_error err;
    nb::raise_from(err, PyExc_ValueError,
                   "SharedDict keys must be encodable as UTF-8; this key contains a lone "
                   "surrogate code point");
  }
  return {p, n};
}

[[noreturn]] void throw_corrupt_value() {
  throw sbx::Error(sbx::Errc::Corrupt, "a stored value is malformed");
}

namespace {
// Indexed by sbx::Errc: the names _set_error_types() takes.
const char* kErrorNames[] = {
    "InvalidArgument", "NotFound", "PermissionDenied", "NoSpaceOnDevice", "Incompatible",
    "NotReady", "SegmentFull", "ValueTooLarge", "TooManyKeys", "Corrupt", "System",
    "TooManyLocks", "LockMisuse", "TooManyViews",
};
static_assert(sizeof(kErrorNames) / sizeof(kErrorNames[0]) <= kPickleRefusedIndex,
              "error codes must not reach the indices kept for Python-side errors");
}  // namespace

void register_error_types(nb::dict types) {
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
}

}  // namespace sbx::py
