// hash.hpp — the key hash.  It must be identical in every process that maps a
// segment (Python's hash() is randomised per process, so it cannot be used),
// and it is seeded per segment so that keys collide differently in each one.
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
    uint64_t w = 0;
    std::memcpy(&w, p, len);
    h = rotl64(h ^ (w * k2), 31) * k1;
  }
  return mix64(h);
}

}  // namespace sbx
