"""Corrupted segments: flipped bits must give an exception or a correct
result, never a crash (segfault) or a hang.

Each case runs in a child process (a crash there must not take pytest down)
with a timeout.  Two kinds of case:

* random: fill a dict, flip random bits anywhere in the segment (the robust
  mutexes included), then run every kind of operation;
* lock words: every single bit of every robust mutex (the allocator's and each
  stripe's), one at a time, then operations whose results are checked against
  a model; the mutex bytes are put back afterwards and the dict must then be
  exactly the model again.

A flipped lock word can make a free mutex look held by a thread that never
held it; the engine raises CorruptSegmentError after the stuck-lock window
(SHAREDBOX_STUCK_LOCK_TIMEOUT, lowered here so that a case takes
milliseconds, not the default 10 s).  Run longer by hand:
SBX_FUZZ_CASES=2000 python -m pytest -m fuzz tests/test_corruption.py
"""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import remove_segment, unique_name

pytestmark = pytest.mark.fuzz

CASES = int(os.environ.get("SBX_FUZZ_CASES", "300"))
# Short stuck-lock windows: the random child may meet a stuck lock in most of
# its 300 operations.  Each child is the only process using its segment, so no
# real holder can be mistaken for a stuck one however short the window.
RANDOM_WINDOW_S = "0.005"
LOCK_WINDOW_S = "0.05"


def _child_env(window):
    env = dict(os.environ)
    env["SHAREDBOX_STUCK_LOCK_TIMEOUT"] = window
    return env


RANDOM_CHILD = textwrap.dedent(
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
    locks = lock_word_ranges(d)
    hit_locks = 0
    with open(f"/dev/shm/{name}", "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        for _ in range(flips):
            # One flip in 32 is aimed at a mutex: they are 200 bytes of a
            # 1 MiB segment, so uniform offsets alone would rarely reach them.
            if rng.random() < 1 / 32:
                lo, hi = rng.choice(locks)
                off = rng.randrange(lo, hi)
            else:
                off = rng.randrange(len(m))
            hit_locks += any(lo <= off < hi for lo, hi in locks)
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
    print("survived", hit_locks)
    '''
)


@pytest.mark.parametrize("flips", [3, 50, 3000])
def test_flipped_bits_never_crash_or_hang(flips):
    failures = []
    for seed in range(CASES // 3):
        name = unique_name("fuzz")
        try:
            proc = subprocess.run(
                [sys.executable, "-c", RANDOM_CHILD, name, str(seed), str(flips)],
                capture_output=True, text=True, timeout=120,  # generous: ASan builds are slow
                env=_child_env(RANDOM_WINDOW_S),
            )
            if proc.returncode != 0 or "survived" not in proc.stdout:
                failures.append((seed, proc.returncode, proc.stderr[-500:]))
        except subprocess.TimeoutExpired:
            failures.append((seed, "hang", ""))
        finally:
            remove_segment(name)
    assert failures == []


LOCK_CHILD = textwrap.dedent(
    r'''
    import mmap, sys, time
    from sharedbox import SharedDict, CorruptSegmentError
    from sharedbox.layout_info import lock_word_ranges
    name, which, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    d = SharedDict(name, size=1 << 20, max_keys=100, stripes=4)
    model = {f"k{i}": i for i in range(40)}
    d.update(model)
    lo, hi = lock_word_ranges(d)[which]
    f = open(f"/dev/shm/{name}", "r+b")
    m = mmap.mmap(f.fileno(), 0)
    clean = bytes(m[lo:hi])  # a free mutex, as every lock is free between operations
    errors = slowest = 0
    for bit in range((hi - lo) * 8):
        key, value = f"new{bit}", bit
        m[lo + bit // 8] ^= 1 << (bit % 8)
        t0 = time.monotonic()
        try:
            d[key] = value
            assert d.get(key) == value, "get after put"
            assert set(d.keys_atomic()) == set(model) | {key}, "keys_atomic"
            assert len(d) == len(model) + 1, "len"
            assert d._check_integrity() == [], "integrity"
            del d[key]
            assert key not in d, "del"
            d.get_stats()
            outcome = "ok"
        except CorruptSegmentError:
            outcome = "error"  # a clean answer: the lock is stuck or its type is corrupt
            errors += 1
        took = time.monotonic() - t0
        slowest = max(slowest, took)
        assert took < budget, f"bit {bit}: {took:.2f} s"
        # Put the mutex back as it was (free); the dict must then be the model
        # again, whatever the failed operation had done (its journal replays).
        m[lo:hi] = clean
        assert d._check_integrity() == [], f"bit {bit}: {d._check_integrity()}"
        assert d.get(key) in (None, value), f"bit {bit}"
        d.pop(key, None)
        assert dict(d.items()) == model, f"bit {bit}: items differ from the model"
        print(bit, outcome, f"{took:.3f}", flush=True)
    print(f"done bits={(hi - lo) * 8} errors={errors} slowest={slowest:.3f}")
    '''
)


# Index 0 is the allocator's mutex, 1..4 the four stripes' (lock_word_ranges).
@pytest.mark.parametrize("which", range(5), ids=["alloc", "stripe0", "stripe1", "stripe2",
                                                   "stripe3"])
def test_every_bit_of_each_lock_word(which):
    """One bit at a time: a correct result or CorruptSegmentError, each within
    a bounded time (the window is 0.05 s; 5 s allows for a loaded machine)."""
    name = unique_name("fuzzlock")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", LOCK_CHILD, name, str(which), "5.0"],
            capture_output=True, text=True, timeout=240, env=_child_env(LOCK_WINDOW_S),
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-300:]
        pytest.fail(f"hang; last bits done: {out!r}")
    finally:
        remove_segment(name)
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    assert proc.returncode == 0 and last[0].startswith("done"), (
        proc.returncode, proc.stdout[-300:], proc.stderr[-2000:])
    # The targeted bits must actually exercise the stuck-lock path: the owner
    # id bits and the type field give errors, so some cases must have raised.
    errors = int(last[0].split("errors=")[1].split()[0])
    assert errors > 0, last[0]


DECODER_CHILD = textwrap.dedent(
    r'''
    import mmap, struct, sys
    import numpy as np
    from hypothesis import HealthCheck, given, settings, strategies as st
    from sharedbox import SharedDict
    name, examples = sys.argv[1], int(sys.argv[2])
    # allow_pickle=False: random pickle bytes are Python's pickle, not our
    # decoder, and must not run anything.
    d = SharedDict(name, size=4 << 20, max_keys=16, allow_pickle=False)
    segment_file = open(f"/dev/shm/{name}", "r+b")
    m = mmap.mmap(segment_file.fileno(), 0)
    KEY = "decoder-fuzz-key-7c3e9a51"
    count = [0]

    def stored(length):
        """Stores a value whose encoding is `length` bytes under a fresh key;
        returns the segment offset of that encoding (it follows the key in
        its record; freed records keep old keys, hence a new key each time)."""
        global KEY
        if KEY in d:
            del d[KEY]  # removes without decoding (pop would decode)
        count[0] += 1
        KEY = f"decoder-fuzz-key-{count[0]:08d}"
        d[KEY] = b"\0" * (length - 1)  # tag 6 (bytes) + payload
        at = m.find(KEY.encode())
        assert at > 0 and m.find(KEY.encode(), at + 1) == -1
        return at + len(KEY)

    DESCRS = [b"'|u1'", b"'<f8'", b"'<i4'", b"'|V3'", b"[('a', '<i4'), ('b', '|u1')]",
              b"'", b"'<f8", b"()", b"{}", b"'|u1' * 10**9", b"\xff\xfe", b"'O'",
              b"[('a', '<i4')] * 2", b"'" + b"x" * 300 + b"'"]
    arrays = st.fixed_dictionaries({
        "flags": st.integers(0, 255), "ndim": st.one_of(st.integers(0, 4), st.integers(0, 255)),
        "shape": st.lists(st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1)), max_size=6),
        "descr": st.one_of(st.sampled_from(DESCRS), st.binary(max_size=40)),
        "descr_len_delta": st.one_of(st.just(0), st.integers(-3, 3), st.integers(0, 65535)),
        "data": st.binary(max_size=200), "consistent": st.booleans(),
        "nbytes_delta": st.one_of(st.just(0), st.integers(-2**63, 2**63)),
    })
    raw = st.one_of(st.binary(min_size=1, max_size=300),
                    st.builds(lambda t, rest: bytes([t]) + rest, st.integers(0, 12),
                              st.binary(max_size=64)))

    def array_value(a):
        """An ndarray encoding [8][flags][ndim][descr_len][nbytes][shape][descr][pad][data]
        at its real offset, so that consistent cases really are valid."""
        if a["consistent"]:  # bytes as a (n,) or (1, n) uint8 array, C or Fortran order
            ndim, descr = 1 + a["ndim"] % 2, b"'|u1'"
        else:
            ndim, descr = a["ndim"], a["descr"]
        shape = (a["shape"] + [1] * ndim)[:ndim]
        descr_len = len(descr) if a["consistent"] else (len(descr) + a["descr_len_delta"]) % 65536
        head_len = 13 + 8 * ndim + len(descr)
        length = head_len + 64 + len(a["data"])
        voff = stored(length)
        pad = (64 - (voff + head_len) % 64) % 64
        data = (a["data"] + b"\x5a" * 64)[: length - head_len - pad]
        nbytes = len(data)
        if a["consistent"]:
            shape = [1, nbytes][-ndim:]
        else:
            nbytes = (nbytes + a["nbytes_delta"]) % 2**64
        head = struct.pack("<BBBHQ", 8, a["flags"], ndim % 256, descr_len, nbytes)
        head += b"".join(struct.pack("<Q", s) for s in shape)
        value = head + descr + b"\0" * pad + data
        assert len(value) == length
        return voff, value, data

    seen = {}

    def read_back(voff, value):
        m[voff:voff + len(value)] = value
        try:
            return d[KEY]
        except SystemError:
            raise  # a C-API misuse in the binding, never an answer to bad data
        except Exception as exc:  # a clean refusal
            seen[type(exc).__name__] = seen.get(type(exc).__name__, 0) + 1
            return exc

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(raw)
    def raw_values(value):
        read_back(stored(len(value)), value)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(arrays)
    def array_values(a):
        voff, value, data = array_value(a)
        got = read_back(voff, value)
        if isinstance(got, np.ndarray):
            # Whatever header was accepted, the array holds exactly the data.
            assert got.nbytes == len(data) and got.tobytes(order="A") == data
            seen["ndarray"] = seen.get("ndarray", 0) + 1

    raw_values()
    array_values()
    assert d._check_integrity() == []
    assert seen.get("ndarray", 0) > 0, seen  # the valid headers did decode
    print("survived", sorted(seen.items()))
    '''
)


def test_decoder_never_crashes_on_malformed_values():
    """The value decoder (codec tags, the ndarray header, its dtype text) fed
    malformed encodings through a real segment: hypothesis draws raw bytes and
    ndarray headers (consistent ones must read back exactly), and writes them
    over a stored value's bytes.  Each answer must be a value or an exception."""
    pytest.importorskip("numpy")
    pytest.importorskip("hypothesis")
    name = unique_name("fuzzdec")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", DECODER_CHILD, name, str(max(CASES, 50))],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        remove_segment(name)
    assert proc.returncode == 0 and "survived" in proc.stdout, (
        proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
