// values.cpp — the codec's free functions (see values.hpp).
#include "values.hpp"

namespace sbx::py {

void copy_bytes_without_gil(uint8_t* dst, const uint8_t* src, uint64_t n) {
  nb::gil_scoped_release unlocked;
  std::memcpy(dst, src, n);
}

std::string array_head(const char* descr, size_t descr_len, nb::handle shape_obj, bool fortran,
                       uint64_t nbytes) {
  nb::tuple shape = nb::cast<nb::tuple>(shape_obj);
  size_t ndim = nb::len(shape);
  if (ndim > codec::kArrayMaxDims || descr_len > 0xFFFF)
    throw nb::value_error("array has too many dimensions or too complex a dtype to store");
  std::string head(1, char(codec::kNdarray));
  head.push_back(char(fortran ? 1 : 0));
  head.push_back(char(ndim));
  uint16_t dl = uint16_t(descr_len);
  head.append(reinterpret_cast<const char*>(&dl), 2);
  head.append(reinterpret_cast<const char*>(&nbytes), 8);
  for (size_t i = 0; i < ndim; ++i) {
    uint64_t d = nb::cast<uint64_t>(shape[i]);
    head.append(reinterpret_cast<const char*>(&d), 8);
  }
  head.append(descr, descr_len);
  return head;
}

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
    case codec::kTree:
      try {
        decode_tree(v + 1, n - 1);
      } catch (const sbx::Error&) {
        throw nb::value_error("malformed encoded value: a bad dict, list or tuple encoding");
      }
      return;
    default: {
      std::string msg = "malformed encoded value: unknown tag " + std::to_string(int(v[0]));
      throw nb::value_error(msg.c_str());
    }
  }
}

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

}  // namespace sbx::py
