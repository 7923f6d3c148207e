#!/usr/bin/env bash
# Runs the Python test suite against an ASan + UBSan build of the extension.
# The sanitizer runtimes must be loaded before Python (LD_PRELOAD); leak
# detection is off because CPython itself keeps memory until exit.
# Usage: scripts/test-asan.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.asan-venv
rm -rf "$venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
pip install --quiet ".[test]" \
  -Ccmake.define.SHAREDBOX_SANITIZE="address;undefined" \
  -Ccmake.build-type=RelWithDebInfo \
  -Cbuild-dir=build/asan

export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
# allocator_may_return_null: a corrupted length must surface as MemoryError
# (std::bad_alloc), as it does without ASan, not as an ASan abort.
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# The slow and torture suites run in the plain build; here the point is
# every code path with the sanitizers watching.
# Corrupted segments make the engine copy garbage lengths (up to the segment
# size) many times; under ASan each large allocation costs milliseconds of
# mapping, so fewer fuzz cases here (the plain build runs the full count).
export SBX_FUZZ_CASES="${SBX_FUZZ_CASES:-60}"
# The stub checks (mypy) and the benchmark smoke run exercise no engine path
# the rest of the suite misses, and are slow under the sanitizer runtime.
python -m pytest -q -p no:cacheprovider -m "not slow and not torture" \
  --ignore=tests/test_typing.py --ignore=tests/test_benchmarks_smoke.py "$@"
