// crash_points.cpp — the hook and the names of the crash points; compiled
// into the engine only in a test build (SHAREDBOX_CRASH_POINTS, see
// crash_points.hpp).  The marker string lets a test tell a test build from a
// release build by its bytes alone.
#include "sharedbox/crash_points.hpp"

#if defined(SHAREDBOX_CRASH_POINTS)

#include <atomic>
#include <cstddef>

namespace sbx {
namespace {
std::atomic<CrashHook> g_hook{nullptr};
const char* const kNames[] = {
#define SBX_CRASH_POINT_NAME(name) #name,
    SBX_CRASH_POINT_LIST(SBX_CRASH_POINT_NAME)
#undef SBX_CRASH_POINT_NAME
};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == std::size_t(CrashPoint::kCount),
              "one name per crash point");
}  // namespace

extern "C" const char sbx_crash_points_marker[] = "sharedbox-crash-points-enabled";

void set_crash_hook(CrashHook hook) { g_hook.store(hook, std::memory_order_relaxed); }
CrashHook crash_hook() { return g_hook.load(std::memory_order_relaxed); }
const char* crash_point_name(CrashPoint p) {
  return uint32_t(p) < uint32_t(CrashPoint::kCount) ? kNames[uint32_t(p)] : "?";
}

}  // namespace sbx

#endif
