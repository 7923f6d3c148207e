#!/usr/bin/env bash
# Regenerates the seed corpus of the segment fuzzer (tests/fuzz/corpus): valid
# images of each template and hand-made edits (lock words, journals, header
# fields, table references, record lengths).  The seeds are edit scripts over
# templates that fuzz_segment.cpp builds deterministically, so they stay tiny;
# rerun this after changing the templates or the segment layout.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cmake -S . -B "$build" -DSHAREDBOX_BUILD_FUZZ=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target sharedbox_fuzz_segment -j 2 >/dev/null
rm -rf tests/fuzz/corpus
"$build/sharedbox_fuzz_segment" --write-seeds tests/fuzz/corpus
