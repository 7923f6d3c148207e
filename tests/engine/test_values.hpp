// test_values.hpp — string values in and out of an sbx::Dict, shared by the
// engine's test programs (test_engine.cpp, test_crash_points.cpp).
#pragma once

#include <cstring>
#include <string>

#include "sharedbox/dict.hpp"

namespace sbx_test {

// Copies a string into the record.
class StringSource : public sbx::ValueSource {
 public:
  explicit StringSource(const std::string& s) : s_(s) {}
  uint64_t max_bytes() const override { return s_.size(); }
  uint64_t write(uint8_t* dst, uint64_t) override {
    if (!s_.empty()) std::memcpy(dst, s_.data(), s_.size());
    return s_.size();
  }

 private:
  const std::string& s_;
};

// Appends what the engine hands over.  Appending (rather than assigning) means
// a missing reset() after a stale lock-free copy would show up as a doubled
// value, so the tests also check the engine's retry protocol.
class StringSink : public sbx::ValueSink {
 public:
  std::string out;
  void take(const uint8_t* value, uint64_t len, uint64_t, bool) override {
    out.append(reinterpret_cast<const char*>(value), len);
  }
  void reset() override { out.clear(); }
};

inline bool put(sbx::Dict& d, const std::string& key, const std::string& value,
                sbx::PutMode mode = sbx::PutMode::Always) {
  StringSource src(value);
  return d.put(d.key(key.data(), key.size()), src, mode);
}

// Returns true and the value in *out if the key is present.
inline bool get(sbx::Dict& d, const std::string& key, std::string* out) {
  StringSink sink;
  bool found = d.get(d.key(key.data(), key.size()), sink);
  if (found && out) *out = std::move(sink.out);
  return found;
}

inline bool contains(sbx::Dict& d, const std::string& key) {
  return d.contains(d.key(key.data(), key.size()));
}

inline bool erase(sbx::Dict& d, const std::string& key, std::string* old_value = nullptr) {
  StringSink sink;
  bool erased = d.erase(d.key(key.data(), key.size()), old_value ? &sink : nullptr);
  if (erased && old_value) *old_value = std::move(sink.out);
  return erased;
}

}  // namespace sbx_test
