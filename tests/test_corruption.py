"""Corrupted segments: flipped bits must give an exception or a correct
result, never a crash (segfault) or a hang.

Each case runs in a child process (a crash there must not take pytest down):
fill a dict, flip random bits anywhere in the segment except the lock words
of the robust mutexes (see docs/design.md, "Corruption"), then run every kind
of operation.  Run longer by hand: SBX_FUZZ_CASES=2000 python -m pytest -m fuzz
"""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import remove_segment, unique_name

pytestmark = pytest.mark.fuzz

CASES = int(os.environ.get("SBX_FUZZ_CASES", "300"))

CHILD = textwrap.dedent(
    r'''
    import mmap, random, sys
    from sharedbox import SharedDict
    from sharedbox.layout_info import lock_word_ranges
    name, seed, flips = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    d = SharedDict(name, size=1 << 20, max_keys=200, stripes=4)
    for i in range(150):
        d[f"k{i}"] = rng.choice([i, "s" * (i % 50), b"b" * (i * 7), [i, {"x": i}], 1.5, 2**70])
    for i in range(0, 150, 3):
        del d[f"k{i}"]
    protected = lock_word_ranges(d)
    with open(f"/dev/shm/{name}", "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        for _ in range(flips):
            while True:
                off = rng.randrange(len(m))
                if not any(lo <= off < hi for lo, hi in protected):
                    break
            m[off] ^= 1 << rng.randrange(8)
        m.close()
    for i in range(300):
        k = f"k{rng.randrange(160)}"
        try:
            r = rng.random()
            if r < 0.35: d.get(k)
            elif r < 0.55: d[k] = "new" * rng.randrange(10)
            elif r < 0.65: d.pop(k, None)
            elif r < 0.75: list(d.items())
            elif r < 0.85: d.keys_atomic(); len(d)
            elif r < 0.95: d.get_stats(); d._check_integrity()
            else: d.recommend_sizing(100)
        except Exception:
            pass  # any exception is an acceptable answer to corruption
    print("survived")
    '''
)


@pytest.mark.parametrize("flips", [3, 50, 3000])
def test_flipped_bits_never_crash_or_hang(flips):
    failures = []
    for seed in range(CASES // 3):
        name = unique_name("fuzz")
        try:
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, name, str(seed), str(flips)],
                capture_output=True, text=True, timeout=120,  # generous: ASan builds are slow
            )
            if proc.returncode != 0 or "survived" not in proc.stdout:
                failures.append((seed, proc.returncode, proc.stderr[-500:]))
        except subprocess.TimeoutExpired:
            failures.append((seed, "hang", ""))
        finally:
            remove_segment(name)
    assert failures == []
