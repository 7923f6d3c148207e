"""Crash safety by enumeration: tests/engine/test_crash_points.cpp kills a
process at every crash point of every operation (and at every point of a
recovery after each of those) and checks what the next process recovers.

The engine's crash points (src/engine/sharedbox/crash_points.hpp) exist only in
a build with -DSHAREDBOX_CRASH_POINTS=ON; these tests also prove that the
release build (the installed extension) contains none of them.
"""

import re
from pathlib import Path

import pytest

import sharedbox._core
from test_engine_cpp import ROOT, _build, _run_tests

HEADER = ROOT / "src" / "engine" / "sharedbox" / "crash_points.hpp"
ENGINE = ROOT / "src" / "engine" / "sharedbox"
MARKER = b"sharedbox-crash-points-enabled"
SUMMARY = re.compile(r"^crash points: (\d+) pairs covered \((\d+) kills in (\d+) operations, "
                     r"(\d+) kills inside recovery\), (\d+) of (\d+) points reached, (\d+) failed$",
                     re.MULTILINE)


def listed_points():
    text = HEADER.read_text()
    body = text[text.index("#define SBX_CRASH_POINT_LIST"):text.index("namespace sbx")]
    return re.findall(r"\bX\((\w+)\)", body)


@pytest.fixture(scope="module")
def crash_tests(tmp_path_factory):
    build = tmp_path_factory.mktemp("crash_build")
    return _build(build, "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DSHAREDBOX_CRASH_POINTS=ON",
                  target="sharedbox_crash_tests")


def test_every_point_in_the_code_is_in_the_list():
    """The list in crash_points.hpp and the SBX_CRASH_POINT uses agree both ways
    (a use of an unlisted name would not compile; this also catches a listed
    point that no code passes any more)."""
    listed = listed_points()
    assert len(listed) == len(set(listed)) > 40
    used = set()
    for source in ENGINE.glob("*.cpp"):
        used |= set(re.findall(r"SBX_CRASH_POINT\((\w+)\)", source.read_text()))
    assert used == set(listed)


def test_every_operation_and_crash_point_pair(crash_tests, tmp_path):
    """Every (operation x crash point) pair and every (point, point inside the
    recovery) pair: recovery leaves an intact dict each time, and every point in
    the list is reached by some operation."""
    proc = _run_tests([str(crash_tests)], timeout=900, env=None, cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out[-12000:]
    summary = SUMMARY.findall(out)
    assert len(summary) == 1, out[-4000:]
    pairs, first, ops, inside, reached, total, failed = map(int, summary[0])
    assert failed == 0 and reached == total == len(listed_points()), out[-4000:]
    assert ops >= 12 and first > 100 and inside > 1000 and pairs == first + inside
    print(out.strip().splitlines()[-1])


# The two data-loss windows an outside review found, each as the pairs that
# showed it: both failed before their fixes (docs/design.md, "Crash points").
@pytest.mark.parametrize("only", [
    # A writer dies inside the free of a stripe's spare (segment full): the
    # stripe journal is closed, the allocator's says FREE.  The next holder of
    # the stripe must not hand out that spare before the allocator replays.
    "put_reclaims_spares:free_journal_open",
    "put_reclaims_spares:free_bits_cleared",
    # A new-key put that failed for space dies after returning its key
    # reservation: recovery must not return it a second time.
    "put_fails_full:put_rollback_unreserved",
    "put_reclaims_spares:put_rollback_unreserved",
])
def test_review_defect_pairs(crash_tests, tmp_path, only):
    proc = _run_tests([str(crash_tests), f"--only={only}"], timeout=300, env=None, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-8000:]
    summary = SUMMARY.findall(proc.stdout)
    assert len(summary) == 1 and int(summary[0][1]) >= 1, proc.stdout[-4000:]


def test_release_build_has_no_crash_points(crash_tests):
    """The installed extension has no crash point code: no hook, no marker, and
    (in a build without debug information, such as the release wheel) not even
    the points' names.  The test build has all three, so the check can fail.
    (A build with -g, like the ASan run's, keeps the enumerators' names in its
    debug information, which is not code.)"""
    test_build = crash_tests.read_bytes()
    assert MARKER in test_build and b"set_crash_hook" in test_build
    assert b"put_rollback_unreserved" in test_build
    installed = Path(sharedbox._core.__file__).read_bytes()
    assert MARKER not in installed and b"set_crash_hook" not in installed
    if b".debug_info" not in installed:
        found = [name for name in listed_points() if name.encode() in installed]
        assert found == []
