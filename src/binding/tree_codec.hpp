// tree_codec.hpp — the native encoding of JSON-like values (codec tag 9; the
// format is in tree_codec.cpp).
#pragma once

#include <cstdint>
#include <string>

#include "common.hpp"

namespace sbx::py {

// Writes the whole value (tag 9 first) into out; false, with out cleared, if
// v is not made only of the types the encoding carries (then pickle it).
bool encode_tree(PyObject* v, std::string& out);
// The value of a tag-9 body (the bytes after the tag); throws the corrupt
// value error on malformed bytes.
nb::object decode_tree(const uint8_t* body, uint64_t n);

}  // namespace sbx::py
