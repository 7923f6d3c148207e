// hash.hpp — the key hash, and key comparison.  The hash must be identical
// in every process that maps a segment (Python's hash() is randomised per
// process, so it cannot be used), and it is seeded per segment so that keys
// collide differently in each one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sbx {

// Final avalanche: every input bit affects every output bit.  The multipliers
// are the well-known ones of the SplitMix64 generator.
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

inline uint64_t rotl64(uint64_t x, unsigned r) { return (x << r) | (x >> (64 - r)); }

// The last 1..7 bytes of a key as a little-endian word, zero-extended: the
// value of `w = 0; memcpy(&w, p, len)`, which compiles to a call or a byte
// loop.  With `before` >= 8 - len bytes of the key ahead of p, one 8-byte
// load ending at the key's end is shifted down; otherwise two overlapping
// loads cover the bytes (OR-ing a byte twice is harmless).
inline uint64_t tail_word(const unsigned char* p, size_t len, size_t before) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the shifts assume little-endian loads");
  if (before + len >= 8) {
    uint64_t w;
    std::memcpy(&w, p + len - 8, 8);
    return w >> (8 * (8 - len));
  }
  if (len >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + len - 4, 4);
    return uint64_t(lo) | (uint64_t(hi) << (8 * (len - 4)));
  }
  return uint64_t(p[0]) | (uint64_t(p[len / 2]) << (8 * (len / 2))) |
         (uint64_t(p[len - 1]) << (8 * (len - 1)));
}

// Eight bytes per step: multiply-rotate-multiply, then mix64 of the state and
// the length.  Short keys (the common case) cost two or three multiplies.
inline uint64_t hash_key(const void* data, size_t len, uint64_t seed) {
  constexpr uint64_t k1 = 0x9E3779B97F4A7C15ULL;  // 2^64 / golden ratio
  constexpr uint64_t k2 = 0xC2B2AE3D27D4EB4FULL;
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t h = seed ^ (uint64_t(len) * k1);
  while (len >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = rotl64(h ^ (w * k2), 31) * k1;
    p += 8;
    len -= 8;
  }
  if (len > 0) {
    const uint64_t w = tail_word(p, len, p - static_cast<const unsigned char*>(data));
    h = rotl64(h ^ (w * k2), 31) * k1;
  }
  return mix64(h);
}

// Whether the n bytes at a and b are equal, reading no byte outside them.
// Keys are short: libc's memcmp costs a call, and reads up to 32 bytes at a
// time, past a short key into the record's next cache line.
inline bool key_bytes_equal(const unsigned char* a, const char* b, size_t n) {
  auto word = [](const void* p) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    return w;
  };
  if (n >= 8) {
    for (size_t i = 0; i + 8 < n; i += 8)
      if (word(a + i) != word(b + i)) return false;
    return word(a + n - 8) == word(b + n - 8);  // the last 8, overlapping
  }
  for (size_t i = 0; i < n; ++i)
    if (a[i] != static_cast<unsigned char>(b[i])) return false;
  return true;
}

}  // namespace sbx
