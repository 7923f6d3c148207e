// common.hpp — what every part of the binding shares: the Python objects the
// pure-Python layer registers at import, error translation, and keys.
#pragma once

#include <Python.h>
#include <nanobind/nanobind.h>

#include <cstdint>
#include <string>

#include "codec.hpp"
#include "text.hpp"
#include "sharedbox/errors.hpp"

namespace sbx::py {

namespace nb = nanobind;
namespace codec = sbx::codec;

constexpr uint64_t kReleaseGilBytes = 1 << 20;  // copies this large run without the GIL
constexpr uint64_t kInlineBytes = 256;
constexpr uint64_t kBatchValueBytes = 4096;  // items(): larger values are read one by one

// Python objects supplied by the pure-Python layer at import time.
struct Registry {
  PyObject* errors[16] = {};  // indexed by sbx::Errc, plus kClosedIndex
  // pickle's own (C) dumps and loads, called directly on the hot path; on an
  // error the Python helpers below run instead, to raise the codec's error.
  PyObject* c_dumps = nullptr;
  PyObject* c_loads = nullptr;
  PyObject* protocol = nullptr;      // the int PICKLE_PROTOCOL (5)
  PyObject* pickle_dumps = nullptr;  // sharedbox._codec.dumps / loads
  PyObject* pickle_loads = nullptr;
  PyObject* array_header = nullptr;
  PyObject* array_new = nullptr;
  PyObject* array_dtype = nullptr;   // _codec.dtype_of_descr: descr bytes -> numpy.dtype
  PyObject* frombuffer = nullptr;    // numpy.frombuffer, imported on the first view
  PyObject* numpy_frombuffer() {
    if (!frombuffer) {
      PyObject* np = PyImport_ImportModule("numpy");
      if (!np) throw nb::python_error();
      frombuffer = PyObject_GetAttrString(np, "frombuffer");  // kept for the process's life
      Py_DECREF(np);
      if (!frombuffer) throw nb::python_error();
    }
    return frombuffer;
  }
  PyObject* ndarray_type = nullptr;  // set once numpy has been imported
};
extern Registry g;
constexpr int kClosedIndex = 15;
constexpr int kPickleRefusedIndex = 14;

// Use of a closed handle (raised as SharedDictClosedError).
struct ClosedError {
  std::string name;
};

PyObject* error_type(int index, PyObject* fallback);
[[noreturn]] void throw_pickle_refused(const char* what);
[[noreturn]] void throw_corrupt_value();
void set_python_error(const sbx::Error& e);
void set_closed_error(const ClosedError& e);
// Converts the exception in flight into a Python error (for raw slot functions).
void set_error_from_current_exception();
// _core._set_error_types(): the Python class for each sbx::Errc name.
void register_error_types(nb::dict types);

// A str key as the UTF-8 bytes the engine hashes (borrowed from the str).
struct KeyBytes {
  const char* data;
  Py_ssize_t len;
};
KeyBytes key_bytes(PyObject* key);

}  // namespace sbx::py
