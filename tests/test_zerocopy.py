"""Zero-copy reads and in-place writes (issue 11): SharedDict.view,
create_array and create_bytes, and the pins that keep viewed records alive.

The contract these tests hold the implementation to:

- d.view(key) returns an array value as a read-only ndarray, and a bytes value
  as a read-only memoryview, whose memory is the record in the segment.  The
  view pins its record for as long as any object uses that memory; an
  overwrite or delete of the key works as usual, but the record's block is
  not reused until the last view in every process is gone.
- with d.create_array(key, shape, dtype, order) as arr: builds the value in
  the segment and publishes it atomically on a normal exit; an exception
  publishes nothing.  Afterwards arr is read-only; writable views of it kept
  from inside the block never reach the published value.  create_bytes does
  the same through a memoryview, released after the block.
- get_stats() reports pins, pinned_bytes, pin_holders (pid -> pins) and
  max_pins_per_process; pins of a process that died are reclaimed without a
  manual step; TooManyViewsError (a SegmentFullError) bounds what one process
  can pin.
- close(), del, unlink and gc in any order never unmap memory under a view.

Multi-process tests use spawned processes started at a barrier (or forked
ones where the test is about fork), join with a timeout and check the exit
status.  A test that needs its own segment size takes the `name` fixture.
"""

import ctypes
import gc
import glob
import hashlib
import json
import multiprocessing as mp
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

from sharedbox import (
    SegmentFullError,
    SharedDict,
    SharedDictClosedError,
    TooManyViewsError,
)
from sharedbox._cli import main as cli_main

from conftest import remove_segment, unique_name
from test_numpy import DTYPES, sample

CTX = mp.get_context("spawn")
ME = os.getpid()


# ---------------------------------------------------------------------------
# helpers


def stats(d):
    gc.collect()  # a view caught in a reference cycle is released here, not later
    return d.get_stats()


def live_holders(s):
    """pin_holders without entries at 0 (a holder with no pins may be listed)."""
    return {pid: n for pid, n in s["pin_holders"].items() if n}


def assert_no_pins(d):
    s = stats(d)
    assert s["pins"] == 0 and s["pinned_bytes"] == 0 and live_holders(s) == {}, (
        s["pins"], s["pinned_bytes"], s["pin_holders"])
    return s


def heap_used(s):
    """bytes_used less the index tables (which grow with the key count)."""
    return s["bytes_used"] - s["index_bytes"]


def warm_up(d):
    """Takes and drops one view, so that whatever a process sets up the first
    time it pins is part of a test's baseline."""
    d["__warm"] = b"w"
    d.view("__warm")
    del d["__warm"]
    gc.collect()


def segment_file(name):
    """(device, inode) of the segment's file.  /proc/self/maps names a
    creator's mapping after the temporary file it was built in, so mappings
    are matched by inode; take it before the segment is unlinked."""
    st = os.stat(f"/dev/shm/{name}")
    return st.st_dev, st.st_ino


def segment_maps(file):
    """[(start, end, file offset)] of this process's mappings of the file
    (a (device, inode) pair, or the name of a segment that exists)."""
    dev, ino = segment_file(file) if isinstance(file, str) else file
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) < 6 or int(parts[4]) != ino:
                continue
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            if os.makedev(major, minor) == dev:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                found.append((start, end, int(parts[2], 16)))
    return found


def mapped_here(file):
    return bool(segment_maps(file))


def address_range(obj):
    """(first byte, nbytes) of the memory of an ndarray or any buffer."""
    arr = obj if isinstance(obj, np.ndarray) else np.frombuffer(obj, dtype=np.uint8)
    return arr.__array_interface__["data"][0], arr.nbytes


def overlaps(a, b):
    (a0, an), (b0, bn) = address_range(a), address_range(b)
    return an > 0 and bn > 0 and a0 < b0 + bn and b0 < a0 + an


def assert_is_in_segment(name, obj):
    """obj's memory is a part of the segment's mapping, and holds the same
    bytes as the segment file at that place: it is the record, not a copy."""
    addr, nbytes = address_range(obj)
    assert nbytes > 0
    for start, end, offset in segment_maps(name):
        if start <= addr and addr + nbytes <= end:
            fd = os.open(f"/dev/shm/{name}", os.O_RDONLY)
            try:
                on_file = os.pread(fd, nbytes, offset + addr - start)
            finally:
                os.close(fd)
            mem = obj.tobytes(order="A") if isinstance(obj, np.ndarray) else bytes(obj)
            assert on_file == mem
            return
    raise AssertionError(f"{addr:#x}+{nbytes} is not inside a mapping of /dev/shm/{name}")


def fill(d, prefix="fill", start=16384):
    """Writes values until the segment is full at every size from `start`
    down to 64 bytes; returns (keys written, bytes written)."""
    keys, total, size = [], 0, start
    while size >= 64:
        key = f"{prefix}{len(keys)}"
        try:
            d[key] = b"\xee" * size
        except SegmentFullError:
            size //= 2
            continue
        keys.append(key)
        total += size
    return keys, total


def digest(buf):
    return hashlib.sha256(memoryview(buf).cast("B") if not isinstance(buf, np.ndarray)
                          else buf.tobytes(order="A")).hexdigest()


def fork_child(body):
    """Runs body() in a forked child that exits with its return value (0 on
    None, 99 on an exception) and never returns here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with pytest's threads
        pid = os.fork()
    if pid == 0:
        status = 99
        try:
            status = body() or 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(status)
    return pid


def wait_exit(pid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not exit within {timeout} s")


class Boom(Exception):
    pass


@pytest.fixture
def zd(name):
    """A 16 MiB SharedDict, checked intact, closed and unlinked after the test."""
    d = SharedDict(name, size=16 << 20, max_keys=5000)
    yield d
    if not d.is_closed():
        gc.collect()
        assert d._check_integrity() == []
        d.close()


# ---------------------------------------------------------------------------
# view: what it returns


def test_view_of_an_array_is_a_read_only_window_on_the_record(zd):
    arr = np.arange(100_000, dtype="<i8") * 3
    zd["a"] = arr
    v = zd.view("a")
    assert type(v) is np.ndarray
    assert v.dtype == arr.dtype and v.shape == arr.shape and np.array_equal(v, arr)
    assert not v.flags.writeable and not v.flags.owndata
    assert_is_in_segment(zd.name, v)
    again = zd.view("a")
    assert address_range(again) == address_range(v)  # both are the one record
    assert not overlaps(zd["a"], v)  # d[key] still returns a copy
    assert zd["a"].flags.writeable


def test_view_of_bytes_is_a_read_only_memoryview_on_the_record(zd):
    data = bytes(range(256)) * 400
    zd["b"] = data
    mv = zd.view("b")
    assert type(mv) is memoryview
    assert mv.readonly and mv.format == "B" and mv.ndim == 1
    assert mv.nbytes == len(data) and mv.tobytes() == data and mv == data
    with pytest.raises(TypeError):
        mv[0] = 1
    assert_is_in_segment(zd.name, mv)
    zd["empty"] = b""
    empty = zd.view("empty")
    assert type(empty) is memoryview and empty.readonly and empty.tobytes() == b""


OTHER_VALUES = [
    1, 2**70, 1.5, "text", None, True, [1, 2], (1,), {"a": 1},
    np.float32(2.5), np.int64(3),
    np.array([1, "two"], dtype=object),
    np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
]


@pytest.mark.parametrize("value", OTHER_VALUES, ids=lambda v: type(v).__name__)
def test_view_of_any_other_value_says_to_use_getitem(zd, value):
    zd["k"] = value
    with pytest.raises(TypeError, match=r"d\[key\]"):
        zd.view("k")
    assert assert_no_pins(zd)["pins"] == 0


def test_view_of_a_missing_key_a_bad_key_or_a_closed_handle(name):
    d = SharedDict(name, {"a": np.arange(3), "gone": b"x"}, size=1 << 20, max_keys=10)
    del d["gone"]
    for missing in ("nope", "gone", ""):
        with pytest.raises(KeyError):
            d.view(missing)
    for bad in (1, b"a", None, ("a",), 1.5):
        with pytest.raises(TypeError):
            d[bad]
        with pytest.raises(TypeError):
            d.view(bad)
    assert_no_pins(d)
    d.close()
    with pytest.raises(SharedDictClosedError):
        d.view("a")
    with pytest.raises(SharedDictClosedError):
        with d.create_array("x", 3, "i4") as arr:
            arr[:] = 1
    with pytest.raises(SharedDictClosedError):
        with d.create_bytes("x", 3) as mv:
            mv[:] = b"abc"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_view_dtypes(zd, dtype):
    arr = sample(dtype)
    zd["a"] = arr
    v = zd.view("a")
    assert type(v) is np.ndarray and not v.flags.writeable
    assert v.dtype == arr.dtype and v.shape == arr.shape
    assert v.tobytes() == arr.tobytes()
    assert_is_in_segment(zd.name, v)


@pytest.mark.parametrize(
    "shape", [(), (0,), (0, 5), (5, 0, 2), (1,), (7,), (2, 3, 4), (1, 1, 1, 1, 5)])
def test_view_shapes(zd, shape):
    arr = (np.arange(int(np.prod(shape)), dtype="f8") + 0.5).reshape(shape)  # 0-d: an array
    assert type(arr) is np.ndarray
    zd["a"] = arr
    v = zd.view("a")
    assert type(v) is np.ndarray and v.shape == shape and v.ndim == len(shape)
    assert v.dtype == arr.dtype and np.array_equal(v, arr) and not v.flags.writeable
    with pytest.raises(ValueError):
        v.flags.writeable = True
    if arr.size:
        assert_is_in_segment(zd.name, v)
    if shape == ():
        assert v[()] == 0.5


def test_view_keeps_the_memory_order(zd):
    f = np.asfortranarray(np.arange(24.0).reshape(2, 3, 4))
    zd["f"] = f
    v = zd.view("f")
    assert v.flags.f_contiguous and not v.flags.c_contiguous and np.array_equal(v, f)
    assert v.strides == f.strides
    assert_is_in_segment(zd.name, v)
    base = np.arange(100, dtype="i4").reshape(10, 10)
    for i, strided in enumerate((base[::2, 1::3], base.T, base[:, 3], base[::-1])):
        zd[f"s{i}"] = strided
        w = zd.view(f"s{i}")
        assert np.array_equal(w, strided) and w.dtype == strided.dtype
        assert w.flags.c_contiguous or w.flags.f_contiguous  # stored packed


# ---------------------------------------------------------------------------
# pins: what holds them, what they cost


def test_stats_report_pins(name):
    sizes = [1 << 20, 64 << 20]
    limits = []
    for i, size in enumerate(sizes):
        d = SharedDict(f"{name}_{i}", size=size, max_keys=100)
        try:
            s = d.get_stats()
            assert s["pins"] == 0 and s["pinned_bytes"] == 0 and s["pin_holders"] == {}
            limit = s["max_pins_per_process"]
            assert type(limit) is int and 8 <= limit <= 1024
            limits.append(limit)
            d["a"] = np.arange(10)
            v = d.view("a")
            s = d.get_stats()
            assert s["pins"] == 1 and s["pin_holders"] == {ME: 1}
            assert all(type(pid) is int for pid in s["pin_holders"])
            assert s["pinned_bytes"] == 0  # the record is the live value: nothing retired
            del v
        finally:
            d.close()
            remove_segment(f"{name}_{i}")
    assert limits == sorted(limits)  # a larger segment allows at least as many


def test_a_view_pins_its_record_while_anything_uses_the_memory(zd):
    arr = np.arange(200_000, dtype="<f8")
    zd["a"] = arr
    warm_up(zd)
    assert_no_pins(zd)
    v = zd.view("a")
    w = zd.view("a")
    s = stats(zd)
    assert s["pins"] == 1 and live_holders(s) == {ME: 1}  # one pin per record per process
    del w
    users = {
        "slice": (v[10:2000:3], arr[10:2000:3]),
        "asarray": (np.asarray(v), arr),
        "memoryview": (memoryview(v), arr),
        "reshape": (v.reshape(400, 500), arr.reshape(400, 500)),
        "transpose": (v.reshape(400, 500).T, arr.reshape(400, 500).T),
        "bytes view": (v.view("u1"), arr.view("u1")),
        "frombuffer": (np.frombuffer(v, dtype="<f8"), arr),
        "ndarray over it": (np.ndarray((100,), "<f8", buffer=v, offset=800), arr[100:200]),
    }
    del v
    zd["a"] = np.zeros(3)  # the record is retired now; the users keep it
    keys, _ = fill(zd)  # and its block must not be reused
    s = stats(zd)
    assert s["pins"] == 1 and s["pinned_bytes"] >= arr.nbytes
    for label in list(users):
        obj, expected = users.pop(label)
        got = np.asarray(obj)
        assert np.array_equal(got, expected), label
        del obj, got
        s = stats(zd)
        assert s["pins"] == (1 if users else 0), label
    assert s["pinned_bytes"] == 0 and live_holders(s) == {}
    for key in keys:
        del zd[key]


def test_overwritten_and_deleted_records_stay_pinned_and_count_as_used(zd):
    a = np.full(300_000, 7, dtype="u1")
    b = b"\x05" * 100_000
    zd["a"], zd["b"] = a, b
    v, mv = zd.view("a"), zd.view("b")
    s0 = stats(zd)
    assert s0["pins"] == 2 and s0["pinned_bytes"] == 0
    va, vb = zd.version("a"), zd.version("b")
    zd["a"] = np.zeros(10, "u1")
    del zd["b"]
    assert vb is not None and zd.version("b") is None and zd.version("a") != va
    assert np.array_equal(zd["a"], np.zeros(10, "u1")) and "b" not in zd
    with pytest.raises(KeyError):
        zd.view("b")
    assert np.array_equal(zd.view("a"), np.zeros(10, "u1"))  # a new view sees the new value
    assert (v == 7).all() and mv == b
    s1 = stats(zd)
    assert s1["pins"] == 2 and s1["pinned_bytes"] >= a.nbytes + len(b)
    assert heap_used(s1) >= heap_used(s0)  # the old records still count as used
    del v, mv
    s2 = assert_no_pins(zd)
    assert heap_used(s1) - heap_used(s2) >= a.nbytes + len(b)
    assert s2["bytes_free"] - s1["bytes_free"] >= a.nbytes + len(b)


def test_pinned_memory_can_make_the_segment_full(name):
    d = SharedDict(name, size=1 << 20, max_keys=100)
    n = int(d.get_stats()["largest_free_block"] * 0.6)
    d["a"] = np.ones(n, "u1")
    v = d.view("a")
    d["a"] = 1  # the big record is retired, and still pinned by v
    d["small"] = "s"
    before = {k: d.version(k) for k in d}
    with pytest.raises(SegmentFullError):
        d["b"] = bytes(n)
    with pytest.raises(SegmentFullError):
        d["a"] = bytes(n)
    with pytest.raises(SegmentFullError):
        with d.create_array("c", n, "u1") as arr:
            arr[:] = 2
    with pytest.raises(SegmentFullError):
        with d.create_bytes("c", n) as mv:
            mv[:] = bytes(n)
    assert {k: d.version(k) for k in d} == before
    assert d["a"] == 1 and d["small"] == "s" and (v == 1).all()
    assert d._check_integrity() == []
    del v
    gc.collect()
    d["b"] = bytes(n)  # fits once the view is gone
    assert len(d["b"]) == n and d._check_integrity() == []
    d.close()


# ---------------------------------------------------------------------------
# Safety 1: other processes overwrite, delete and fill


def _overwrite_delete_fill(name, barrier, out):
    d = SharedDict(name, create=False)
    barrier.wait()
    rng = np.random.default_rng(1)
    for i in range(60):  # blocks of many sizes come and go
        d["a"] = np.full(int(rng.integers(1, 400_000)), i % 251, dtype="u1")
        d["b"] = bytes([i % 251]) * int(rng.integers(1, 150_000))
    d["a"] = np.full(1000, 42, dtype="u1")
    del d["b"]
    keys, total = fill(d, "child")
    out.put((len(keys), total))
    d.close()


def test_views_survive_other_processes_overwriting_deleting_and_filling(name):
    d = SharedDict(name, size=4 << 20, max_keys=5000)
    a = np.arange(250_000, dtype="<u4")
    b = bytes(range(256)) * 1000
    d["a"], d["b"] = a, b
    v, mv = d.view("a"), d.view("b")
    part = v[1000:2000]
    barrier, out = CTX.Barrier(2), CTX.Queue()
    p = CTX.Process(target=_overwrite_delete_fill, args=(name, barrier, out))
    p.start()
    barrier.wait()
    checks = 0
    deadline = time.monotonic() + 120
    while p.is_alive() and time.monotonic() < deadline:  # the views never change, not for a moment
        assert np.array_equal(v, a) and mv == b and np.array_equal(part, a[1000:2000])
        checks += 1
    p.join(120)
    assert p.exitcode == 0
    written, _ = out.get(timeout=10)
    assert written > 0 and checks > 0
    assert np.array_equal(v, a) and mv.tobytes() == b and np.array_equal(part, a[1000:2000])
    assert np.array_equal(d["a"], np.full(1000, 42, dtype="u1")) and "b" not in d
    s = stats(d)
    assert s["pins"] == 2 and live_holders(s) == {ME: 2}
    assert s["pinned_bytes"] >= a.nbytes + len(b)

    # The segment is full: writes fail cleanly and leave everything as it was.
    versions = {k: d.version(k) for k in d}
    new_a = d["a"]
    attempts = {
        "overwrite": lambda: d.__setitem__("a", np.zeros(300_000, "u1")),
        "insert": lambda: d.__setitem__("new", bytes(300_000)),
        "create_array": lambda: _create_array(d, "a", 300_000),
        "create_bytes": lambda: _create_bytes(d, "new", 300_000),
    }
    for label, attempt in attempts.items():
        with pytest.raises(SegmentFullError):
            attempt()
        assert {k: d.version(k) for k in d} == versions, label
    assert np.array_equal(d["a"], new_a) and "new" not in d
    assert d._check_integrity() == []
    assert np.array_equal(v, a) and mv.tobytes() == b

    free = s["bytes_free"]
    del v, mv, part
    s = assert_no_pins(d)
    assert s["bytes_free"] - free >= a.nbytes + len(b)
    d["new"] = bytes(300_000)  # the old "a" block is free again
    assert d._check_integrity() == []
    d.close()


def _create_array(d, key, n):
    with d.create_array(key, n, "u1") as arr:
        arr[:] = 3


def _create_bytes(d, key, n):
    with d.create_bytes(key, n) as mv:
        mv[:] = b"\x03" * n


def _hold_a_view(name, ready, go, out):
    d = SharedDict(name, create=False)
    v = d.view("a")
    out.put(("before", digest(v)))
    ready.set()
    assert go.wait(120)
    out.put(("after", digest(v)))
    del v
    gc.collect()
    out.put(("released", os.getpid()))
    d.close()


def test_a_view_held_by_another_process_keeps_its_block_in_use(name):
    d = SharedDict(name, size=2 << 20, max_keys=5000)
    a = np.arange(200_000, dtype="<i4")
    d["a"] = a
    ready, go, out = CTX.Event(), CTX.Event(), CTX.Queue()
    p = CTX.Process(target=_hold_a_view, args=(name, ready, go, out))
    p.start()
    try:
        assert ready.wait(120)
        assert out.get(timeout=10) == ("before", digest(a))
        s = stats(d)
        assert s["pins"] == 1 and live_holders(s) == {p.pid: 1}
        d["a"] = "replaced"
        keys, _ = fill(d)
        s = stats(d)
        assert s["pinned_bytes"] >= a.nbytes and live_holders(s) == {p.pid: 1}
        with pytest.raises(SegmentFullError):
            d["big"] = bytes(a.nbytes // 2)
        assert "big" not in d and d["a"] == "replaced" and d._check_integrity() == []
    finally:
        go.set()
    assert out.get(timeout=60) == ("after", digest(a))  # the fill did not touch it
    assert out.get(timeout=60) == ("released", p.pid)
    s = assert_no_pins(d)
    d["big"] = bytes(a.nbytes // 2)  # the child's release freed the block
    p.join(60)
    assert p.exitcode == 0
    assert d._check_integrity() == []
    d.close()


# ---------------------------------------------------------------------------
# Safety 2: pins of a process killed with SIGKILL are reclaimed


def _pin_and_sleep(name, ready):
    d = SharedDict(name, create=False)
    held = [d.view("a"), d.view("b")]  # noqa: F841 (held until the kill)
    with d.create_array("c", 65536, "u1") as arr:  # and a block being built
        arr[:] = 9
        ready.set()
        time.sleep(600)


@pytest.mark.parametrize("trigger", ["get_stats", "segment full"])
def test_pins_of_a_killed_process_are_reclaimed(name, trigger):
    """get_stats() reclaims them (and the stats it returns already show the
    blocks free); so does a write that would otherwise raise SegmentFullError
    (then it succeeds in the reclaimed space)."""
    d = SharedDict(name, size=4 << 20, max_keys=5000)
    a = np.arange(250_000, dtype="<u4")
    b = bytes(200_000)
    d["a"], d["b"] = a, b
    warm_up(d)
    base = stats(d)
    ready = CTX.Event()
    p = CTX.Process(target=_pin_and_sleep, args=(name, ready))
    p.start()
    try:
        assert ready.wait(120)
        s = stats(d)
        assert s["pins"] == 3 and live_holders(s) == {p.pid: 3}
        assert s["pinned_bytes"] >= 65536  # the array being built
        d["a"] = a[::-1].copy()  # same sizes: only the child's pins differ from base
        d["b"] = b"\x01" * len(b)
        s = stats(d)
        pinned = 65536 + a.nbytes + len(b)
        assert s["pinned_bytes"] >= pinned
        assert s["bytes_used"] >= base["bytes_used"] + pinned
        if trigger == "segment full":
            full, _ = fill(d, "pre")  # only the dead process's blocks can make room now
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(60)
    assert p.exitcode == -signal.SIGKILL
    if trigger == "segment full":
        keys, written = fill(d)  # no get_stats() before this
        # (values take a little more than their length: allow for the rounding)
        assert written > pinned // 2, (written, pinned)
        for key in keys + full:
            del d[key]
    s = assert_no_pins(d)
    assert p.pid not in s["pin_holders"]
    if trigger == "segment full":  # thousands of keys came and went: allow the index a little
        assert abs(heap_used(s) - heap_used(base)) <= 4096, (heap_used(s), heap_used(base))
    else:
        assert s["bytes_used"] == base["bytes_used"]
    assert "c" not in d and d._check_integrity() == []
    assert np.array_equal(d["a"], a[::-1]) and d["b"] == b"\x01" * len(b)
    d.close()


def _pin_then_block(d, key, w, r):
    def body():
        v = d.view(key)  # noqa: F841 (held until the parent kills this process)
        os.write(w, b"+")
        os.read(r, 1)  # blocks: the parent never writes
        return 3
    return body


@pytest.mark.parametrize("first", ["view", "create_array"])
def test_64_pin_holders_and_reclaiming_them_on_the_next_pin(name, first):
    """64 processes may hold pins at a time: the 65th gets TooManyViewsError.
    Once they are killed, the next process to pin reclaims their slots (no
    get_stats() call in between)."""
    d = SharedDict(name, {"a": np.arange(10)}, size=4 << 20, max_keys=100)
    ready_r, ready_w = os.pipe()
    block_r, block_w = os.pipe()
    pids = []
    try:
        for _ in range(64):
            pids.append(fork_child(_pin_then_block(d, "a", ready_w, block_r)))
        got = b""
        deadline = time.monotonic() + 120
        while len(got) < 64 and time.monotonic() < deadline:
            if select.select([ready_r], [], [], 1)[0]:
                got += os.read(ready_r, 64)
        assert got == b"+" * 64
        s = stats(d)
        assert s["pins"] == 64 and live_holders(s) == {pid: 1 for pid in pids}
        with pytest.raises(TooManyViewsError):
            d.view("a")
        with pytest.raises(TooManyViewsError):
            _create_array(d, "b", 4)
        assert "b" not in d and d._check_integrity() == []
        assert np.array_equal(d["a"], np.arange(10))  # a plain read needs no pin
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            assert wait_exit(pid) == -signal.SIGKILL
        for fd in (ready_r, ready_w, block_r, block_w):
            os.close(fd)
    if first == "view":
        v = d.view("a")
        assert np.array_equal(v, np.arange(10))
    else:
        with d.create_array("b", 4, "i4") as arr:
            arr[:] = 5
        del arr  # (published in place, it would hold the record's pin too)
        v = d.view("b")
    s = stats(d)
    assert s["pins"] == 1 and live_holders(s) == {ME: 1}
    assert not set(pids) & set(s["pin_holders"])
    del v
    assert_no_pins(d)
    assert d._check_integrity() == []
    d.close()


# ---------------------------------------------------------------------------
# Safety 3: close, del, unlink and gc with live views


def test_close_keeps_live_views_readable_until_the_last_is_released(name):
    d = SharedDict(name, size=1 << 20, max_keys=10)
    a = np.arange(10_000)
    b = b"bytes" * 100
    d["a"], d["b"] = a, b
    v, mv = d.view("a"), d.view("b")
    part = d.view("a")[5:50]
    with d.create_array("c", 100, "u2") as arr:
        arr[:] = 7
    file = segment_file(name)
    d.close()
    assert mapped_here(file)
    assert np.array_equal(v, a) and mv == b and np.array_equal(part, a[5:50]) and (arr == 7).all()
    with pytest.raises(SharedDictClosedError):
        d.view("a")
    with pytest.raises(SharedDictClosedError):
        d["a"]
    with pytest.raises(SharedDictClosedError):
        _create_array(d, "x", 1)
    with pytest.raises(SharedDictClosedError):
        d.get_stats()
    d.close()  # again: nothing
    d.unlink()
    assert not os.path.exists(f"/dev/shm/{name}")
    assert np.array_equal(v, a) and mv == b  # still readable once unlinked
    with SharedDict(name, {"a": np.zeros(10_000, int)}, size=1 << 20) as reused:
        assert reused["a"].sum() == 0  # a new segment under the same name
    remove_segment(name)
    assert np.array_equal(v, a) and mv == b
    del v
    gc.collect()
    assert mapped_here(file) and np.array_equal(part, a[5:50])
    del part, mv
    gc.collect()
    assert mapped_here(file) and (arr == 7).all()
    del arr
    gc.collect()
    assert not mapped_here(file)


ORDERS = textwrap.dedent(
    r'''
    import gc, itertools, os, random, sys
    import numpy as np
    from sharedbox import SharedDict, _core

    mode, limit, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    OPS = ["close", "del_dict", "unlink", "del_view", "del_other", "del_bytes"]
    if mode == "cycles":
        OPS.append("gc")
    orders = list(itertools.permutations(OPS))
    if limit < len(orders):
        orders = random.Random(11).sample(orders, limit)
    A = np.arange(50_000, dtype="<i8")
    B = bytes(range(256)) * 100

    def mapped(file):  # by inode: a creator's mapping is named after its temporary file
        dev, ino = file
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and int(parts[4]) == ino:
                    major, minor = (int(x, 16) for x in parts[3].split(":"))
                    if os.makedev(major, minor) == dev:
                        return True
        return False

    def hold(obj):
        if mode == "cycles":  # freed by the garbage collector, not by del
            box = [obj]
            box.append(box)
            return box
        return [obj]

    def check(held, expected):
        """The label of a live view whose contents changed, or None."""
        for label, box in held.items():
            got = box[0]
            want = expected[label]
            same = (got == want) if label == "bytes" else np.array_equal(got, want)
            if not same:
                return label
        return None

    for i, order in enumerate(orders):
        name = f"{prefix}_{i}"
        print(i, " ".join(order), flush=True)
        d = SharedDict(name, size=1 << 20, max_keys=16)
        st = os.stat("/dev/shm/" + name)
        file = (st.st_dev, st.st_ino)
        d["a"], d["b"] = A, B
        held = {"view": hold(d.view("a")), "bytes": hold(d.view("b"))}
        if i % 2:
            with d.create_array("c", len(A), "<i8") as arr:
                arr[:] = A
            held["other"] = hold(arr)
            del arr
        else:
            held["other"] = hold(d.view("a")[10:])
        expected = {"view": A, "bytes": B, "other": A if i % 2 else A[10:]}
        if i % 3 == 0:  # retire the records: the views hold the only pins
            d["a"] = 0
            del d["b"]
        dict_box = hold(d)
        del d
        for op in order:
            if op == "close":
                if dict_box is not None:
                    dict_box[0].close()
            elif op == "del_dict":
                dict_box = None
            elif op == "unlink":
                if dict_box is not None and dict_box[0].is_closed():
                    dict_box[0].unlink()
                else:
                    _core.unlink_segment(name)
            elif op == "gc":
                gc.collect()
            else:
                held.pop(op[4:])
            changed = check(held, expected)
            if changed:
                print("CHANGED", changed, "after", op, flush=True)
                sys.exit(3)
            if dict_box is not None and not dict_box[0].is_closed():
                if "b" in dict_box[0] and dict_box[0]["b"] != B:  # the handle still works
                    sys.exit(4)
        gc.collect()
        if mapped(file) or os.path.exists("/dev/shm/" + name):
            print("STILL MAPPED" if mapped(file) else "NOT UNLINKED", flush=True)
            sys.exit(5)
    print("done", len(orders), flush=True)
    '''
)


@pytest.mark.parametrize("mode,limit", [
    ("plain", 720),
    ("cycles", 300),
    pytest.param("cycles", 5040, marks=pytest.mark.slow, id="cycles-all"),
])
def test_every_order_of_close_del_unlink_and_gc_is_safe(mode, limit):
    """In a child interpreter (a segfault shows as exit status -11): each
    order of close(), del of the dict, unlink, del of each view (and gc, with
    everything held in reference cycles) keeps the live views readable and
    unchanged, and leaves nothing mapped or named at the end."""
    prefix = unique_name("sbxzc")
    try:
        proc = subprocess.run([sys.executable, "-c", ORDERS, mode, str(limit), prefix],
                              capture_output=True, text=True, timeout=900)
    finally:
        for path in glob.glob(f"/dev/shm/{prefix}_*"):
            remove_segment(os.path.basename(path))
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines[-1:] == [f"done {limit}"], (
        f"exit status {proc.returncode} (-11: segfault) after: {lines[-3:]}\n{proc.stderr[-3000:]}")


CLOSE_WHILE_BUILDING = textwrap.dedent(
    r'''
    import gc, sys
    import numpy as np
    from sharedbox import SharedDict, SharedDictClosedError
    name = sys.argv[1]
    d = SharedDict(name, size=1 << 20, max_keys=10)
    d["k"] = "old"
    try:
        with d.create_array("k", 1000, "i8") as arr:
            arr[:500] = 1
            d.close()
            arr[500:] = 1  # the block must still be mapped
        print("published")
    except SharedDictClosedError:
        print("closed")
    print(int(arr.sum()))
    del arr
    gc.collect()
    e = SharedDict(name, create=False)
    k = e["k"]
    print("old" if isinstance(k, str) and k == "old" else ("new" if k.sum() == 1000 else "torn"))
    print(e._check_integrity(), e.get_stats()["pins"])
    e.close()
    '''
)


def test_close_inside_a_create_array_block(name):
    SharedDict(name, size=1 << 20, max_keys=10).close()
    proc = subprocess.run([sys.executable, "-c", CLOSE_WHILE_BUILDING, name],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    lines = proc.stdout.split("\n")
    assert lines[0] in ("published", "closed")
    assert lines[1] == "1000"
    assert lines[2] == {"published": "new", "closed": "old"}[lines[0]]
    assert lines[3] == "[] 0"


# ---------------------------------------------------------------------------
# create_array and create_bytes


def test_create_array_builds_in_the_segment_and_publishes_in_place(zd):
    zd["k"] = "old"
    expected = np.arange(300, dtype="f4").reshape(100, 3)
    with zd.create_array("k", (100, 3), "f4") as arr:
        assert type(arr) is np.ndarray and arr.flags.writeable
        assert arr.shape == (100, 3) and arr.dtype == np.float32 and arr.flags.c_contiguous
        assert_is_in_segment(zd.name, arr)
        scratch = arr[:10]  # a view dropped before the end does not force a copy
        scratch[:] = 1
        del scratch
        arr[:] = expected
        assert zd["k"] == "old"  # nothing published yet
        where = address_range(arr)
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr.flags.writeable = True
    with pytest.raises(ValueError):
        arr[0, 0] = 1
    got = zd["k"]
    assert got.dtype == np.float32 and np.array_equal(got, expected) and got.flags.writeable
    v = zd.view("k")
    assert address_range(v) == where  # published in place: no copy
    assert np.array_equal(arr, expected)
    with zd.create_array("n", 5, "<i2") as one_d:  # an int shape
        one_d[:] = 9
    assert zd["n"].shape == (5,) and zd["n"].tolist() == [9] * 5


def test_the_array_from_create_array_stays_valid_after_publication(zd):
    with zd.create_array("k", 100_000, "<u4") as arr:
        arr[:] = np.arange(100_000)
    s = stats(zd)
    assert s["pins"] == 1 and live_holders(s) == {ME: 1}  # arr uses the record
    zd["k"] = "replaced"
    keys, _ = fill(zd)
    assert np.array_equal(arr, np.arange(100_000))
    assert stats(zd)["pinned_bytes"] >= arr.nbytes
    del arr
    assert_no_pins(zd)
    for key in keys:
        del zd[key]


@pytest.mark.parametrize("dtype", [
    "u1", ">i4", "<f8", "c16", "?", "M8[ns]", "U5", "S3",
    np.dtype([("a", "<i4"), ("b", ">f8", (2,)), ("c", "U3")]),
    np.dtype([("x", "u1"), ("y", "<i8")], align=True),
], ids=str)
def test_create_array_dtypes(zd, dtype):
    data = sample(dtype, (4, 6))
    with zd.create_array("k", (4, 6), dtype) as arr:
        assert arr.dtype == np.dtype(dtype)
        arr[...] = data
    got, v = zd["k"], zd.view("k")
    for out in (got, v):
        assert out.dtype == np.dtype(dtype) and out.shape == (4, 6)
        if out.dtype.names:  # field by field: assignment does not copy the padding
            for field in out.dtype.names:
                assert out[field].tobytes() == data[field].tobytes(), field
        else:
            assert out.tobytes() == data.tobytes()


@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (7,), (2, 3, 4), (1, 1, 5)])
def test_create_array_shapes(zd, shape):
    data = (np.arange(int(np.prod(shape)), dtype="i8") - 3).reshape(shape)
    with zd.create_array("k", shape, "i8") as arr:
        assert arr.shape == shape
        arr[...] = data
    got, v = zd["k"], zd.view("k")
    assert got.shape == v.shape == shape
    assert np.array_equal(got, data) and np.array_equal(v, data)
    if shape == ():
        assert v[()] == -3 and got[()] == -3


def test_create_array_in_fortran_order(zd):
    data = np.arange(24.0).reshape(2, 3, 4)
    with zd.create_array("k", (2, 3, 4), "f8", order="F") as arr:
        assert arr.flags.f_contiguous and not arr.flags.c_contiguous
        arr[...] = data
    for out in (zd["k"], zd.view("k")):
        assert out.flags.f_contiguous and not out.flags.c_contiguous
        assert np.array_equal(out, data)


def test_create_array_refuses_object_arrays_and_too_large_ones(zd):
    zd["k"] = 1
    with pytest.raises((TypeError, ValueError)):
        _create_array_of(zd, "k", 3, object)
    with pytest.raises(SegmentFullError):
        _create_array_of(zd, "k", 32 << 20, "u1")
    assert zd["k"] == 1 and len(zd) == 1
    assert_no_pins(zd)


def test_create_array_and_create_bytes_argument_errors(zd):
    zd["k"] = 1
    for call, exc in [
        (lambda: _create_array_of(zd, 5, 3, "u1"), TypeError),  # key not a str
        (lambda: _create_array_of(zd, "k", (2, -1), "u1"), ValueError),
        (lambda: _create_array_of(zd, "k", "3", "u1"), TypeError),
        (lambda: _create_array_of(zd, "k", 3, "u1", order="X"), ValueError),
        (lambda: _create_array_of(zd, "k", 3, "not a dtype"), TypeError),
        (lambda: _create_bytes(zd, 5, 3), TypeError),
        (lambda: _create_bytes(zd, "k", -1), ValueError),
        (lambda: _create_bytes(zd, "k", 2.0), TypeError),
    ]:
        with pytest.raises(exc):
            call()
    assert zd["k"] == 1 and len(zd) == 1
    assert_no_pins(zd)


def test_create_array_of_a_new_key_in_a_full_index(name):
    """max_keys reached: publishing a new key fails with TooManyKeysError,
    publishes nothing and frees the block; an existing key still works."""
    from sharedbox import TooManyKeysError

    d = SharedDict(name, {"a": b"1", "b": 2}, size=1 << 20, max_keys=2)
    d.view("a")  # (whatever a process sets up on its first pin is in the baseline)
    base = stats(d)
    with pytest.raises(TooManyKeysError):
        with d.create_array("c", 1000, "u1") as arr:
            arr[:] = 1
    del arr
    with pytest.raises(TooManyKeysError):
        _create_bytes(d, "c", 1000)
    assert "c" not in d and dict(d.items()) == {"a": b"1", "b": 2}
    s = assert_no_pins(d)
    # (a refused insert may grow the index table, as d[new] = v does: not counted)
    assert heap_used(s) == heap_used(base)
    with d.create_array("a", 1000, "u1") as arr:  # overwriting needs no new key
        arr[:] = 2
    del arr
    assert (d["a"] == 2).all() and d._check_integrity() == []
    d.close()


def _create_array_of(d, key, shape, dtype, order="C"):
    with d.create_array(key, shape, dtype, order=order) as arr:
        arr[...] = 0


@pytest.mark.parametrize("how", ["create_array", "create_bytes"])
@pytest.mark.parametrize("existing", [True, False], ids=["overwrite", "insert"])
def test_an_exception_in_the_block_publishes_nothing_and_frees_the_block(zd, how, existing):
    if existing:
        zd["k"] = np.arange(5)
    zd["other"] = "x"
    warm_up(zd)
    before = {k: zd.version(k) for k in zd}
    base = stats(zd)
    kept = []
    with pytest.raises(Boom):
        if how == "create_array":
            with zd.create_array("k", 100_000, "u1") as buf:
                buf[:] = 1
                kept.append(buf)
                raise Boom
        else:
            with zd.create_bytes("k", 100_000) as buf:
                buf[:] = b"\x01" * 100_000
                kept.append(buf)
                raise Boom
    del buf
    assert {k: zd.version(k) for k in zd} == before
    if existing:
        assert np.array_equal(zd["k"], np.arange(5))
    else:
        assert "k" not in zd
        with pytest.raises(KeyError):
            zd.view("k")
    if how == "create_array":  # held by the array: not freed yet
        assert stats(zd)["bytes_used"] >= base["bytes_used"] + 100_000
    kept.clear()
    gc.collect()  # the traceback cycle (if any) is gone too
    s = assert_no_pins(zd)
    assert s["bytes_used"] == base["bytes_used"]
    assert zd._check_integrity() == []


KEEPERS = {
    "slice": lambda a: a[10:20],
    "memoryview": memoryview,
    "dtype view": lambda a: a.view("u1"),
    "reshape": lambda a: a.reshape(10, 100),
    "frombuffer": lambda a: np.frombuffer(memoryview(a), dtype="<i8"),
    "ctypes": lambda a: (ctypes.c_int64 * a.size).from_buffer(a),
    "same object": lambda a: a,
}


def _scribble(obj):
    """Writes 0xFF over every byte of obj; False if obj refuses writes."""
    if isinstance(obj, ctypes.Array):  # writable by construction
        ctypes.memset(ctypes.addressof(obj), 0xFF, ctypes.sizeof(obj))
        return True
    try:
        target = np.asarray(obj)  # a memoryview too: writable if it is
        target.reshape(-1).view("u1")[...] = 0xFF
        return True
    except (ValueError, TypeError):
        return False


@pytest.mark.parametrize("keep", list(KEEPERS))
def test_writable_views_kept_from_inside_the_block_cannot_reach_the_published_value(zd, keep):
    expected = np.arange(1000, dtype="<i8")
    with zd.create_array("k", 1000, "<i8") as arr:
        arr[:] = expected
        kept = KEEPERS[keep](arr)
    assert not arr.flags.writeable
    _scribble(kept)
    if keep == "same object":
        assert not _scribble(arr)
    v = zd.view("k")
    assert np.array_equal(zd["k"], expected) and np.array_equal(v, expected)
    if keep != "same object":
        assert not overlaps(v, kept)  # published as a copy
    other = SharedDict(zd.name, create=False)
    assert np.array_equal(other["k"], expected)
    other.close()
    del kept, arr, v
    assert_no_pins(zd)


def test_create_bytes_round_trip(zd):
    data = os.urandom(10_000)
    with zd.create_bytes("b", len(data)) as mv:
        assert type(mv) is memoryview and not mv.readonly
        assert mv.format == "B" and mv.ndim == 1 and mv.nbytes == len(data)
        assert_is_in_segment(zd.name, mv)
        where = address_range(mv)
        mv[:] = data
        assert "b" not in zd
    got = zd["b"]
    assert type(got) is bytes and got == data
    v = zd.view("b")
    assert v.tobytes() == data and address_range(v) == where  # published in place
    for use in (lambda: mv[0], lambda: len(mv), lambda: mv.tobytes(),
                lambda: mv.__setitem__(0, 1), lambda: bytes(mv)):
        with pytest.raises(ValueError):  # released
            use()
    with zd.create_bytes("e", 0) as mv:
        assert mv.nbytes == 0
    assert zd["e"] == b"" and zd.view("e").tobytes() == b""


@pytest.mark.parametrize("keep", ["slice", "frombuffer", "cast"])
def test_create_bytes_views_kept_from_inside_the_block_cannot_reach_the_published_value(zd, keep):
    data = bytes(range(256)) * 4
    with zd.create_bytes("b", len(data)) as mv:
        mv[:] = data
        kept = {"slice": lambda: mv[10:20], "frombuffer": lambda: np.frombuffer(mv, "u1"),
                "cast": lambda: mv.cast("I")}[keep]()
    _scribble(kept)
    v = zd.view("b")
    assert zd["b"] == data and v.tobytes() == data
    assert not overlaps(v, kept)
    del kept, v
    assert_no_pins(zd)


# ---------------------------------------------------------------------------
# Safety 5: no writable view of a published record


def test_no_public_way_to_write_through_a_view(zd):
    zd["a"] = np.arange(1000, dtype="<i4")
    zd["b"] = b"\x00" * 1000
    v, mv = zd.view("a"), zd.view("b")
    derived = [v, v[3:9], v.reshape(10, 100).T, v.view("u1"), np.asarray(v),
               np.ndarray((10,), "<i4", buffer=v), np.frombuffer(mv, "u1"), np.asarray(mv)]
    for arr in derived:
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr.flags.writeable = True
        with pytest.raises(ValueError):
            arr.setflags(write=True)
        with pytest.raises(ValueError):
            arr[...] = 1
    strided = np.lib.stride_tricks.as_strided(v, writeable=True)
    assert not strided.flags.writeable  # "writable if the original array was"
    for buf in (memoryview(v), mv, mv[1:5], mv.cast("I")):
        assert buf.readonly
        with pytest.raises(TypeError):
            buf[0] = 1
    for exporter in (v, mv, v.base):
        if exporter is None:
            continue
        with pytest.raises((TypeError, ValueError, BufferError)):
            (ctypes.c_char * 8).from_buffer(exporter)  # needs a writable buffer
    assert np.array_equal(zd["a"], np.arange(1000)) and zd["b"] == b"\x00" * 1000


# ---------------------------------------------------------------------------
# atomic publication, seen from another process


SHAPE = (256, 1024)


def _watch_publications(name, barrier, stop, out):
    d = SharedDict(name, create=False)
    barrier.wait()
    last, reads, bad, views = -1, 0, [], []
    while not stop.is_set() or reads < 50:
        val = d["frame"]
        if isinstance(val, str):
            now = -1 if val == "old" else None
        elif val.shape == SHAPE and val.dtype == np.uint32 and val.min() == val.max():
            now = int(val[0, 0])
        else:
            now = None
        if now is None or now < last:
            bad.append(("read", repr(val)[:80], last))
        last = max(last, now if now is not None else last)
        try:
            v = d.view("frame")
        except TypeError:  # still "old"
            v = None
        if v is not None:
            first = int(v[0, 0])
            if v.shape != SHAPE or v.min() != first or v.max() != first or first < 0:
                bad.append(("view", first))
            views.append((v, first))
            if len(views) > 4:  # a view taken earlier still holds its value
                old, value = views.pop(0)
                if old.min() != value or old.max() != value:
                    bad.append(("changed", value))
        reads += 1
    final = d["frame"]  # read after the last publication
    complete = final.shape == SHAPE and final.min() == final.max()
    out.put((reads, int(final[0, 0]) if complete else None, bad[:5]))
    del views, v
    d.close()


def test_create_array_publication_is_atomic(name):
    d = SharedDict(name, {"frame": "old"}, size=64 << 20, max_keys=10)
    barrier, stop, out = CTX.Barrier(3), CTX.Event(), CTX.Queue()
    ps = [CTX.Process(target=_watch_publications, args=(name, barrier, stop, out))
          for _ in range(2)]
    for p in ps:
        p.start()
    barrier.wait()
    n = 150
    try:
        for i in range(1, n + 1):
            with d.create_array("frame", SHAPE, "u4") as arr:
                arr[:128] = i  # half now, half later: a reader must never see this
                time.sleep(0.002)
                arr[128:] = i
    finally:
        stop.set()
    del arr  # the last frame, published in place, holds a pin
    results = [out.get(timeout=120) for _ in ps]
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    for reads, last, bad in results:
        assert bad == [] and reads >= 50 and last == n
    assert_no_pins(d)
    assert d._check_integrity() == []
    d.close()


# ---------------------------------------------------------------------------
# Safety 6: a process that leaks views


def test_a_process_that_leaks_views_gets_too_many_views_error(name, capsys):
    assert issubclass(TooManyViewsError, SegmentFullError)
    d = SharedDict(name, size=4 << 20, max_keys=2100)
    m = d.get_stats()["max_pins_per_process"]
    for i in range(m + 2):
        d[f"k{i}"] = np.full(4, i, "i8")
    leaked = [d.view(f"k{i}") for i in range(m)]
    s = stats(d)
    assert s["pins"] == m and live_holders(s) == {ME: m}
    with pytest.raises(TooManyViewsError) as err:
        d.view(f"k{m}")
    assert isinstance(err.value, SegmentFullError)
    with pytest.raises(TooManyViewsError):
        _create_array(d, "new", 4)
    with pytest.raises(TooManyViewsError):
        _create_bytes(d, "new", 4)
    assert "new" not in d
    again = d.view("k0")  # a record this process pins already: no new pin
    assert np.array_equal(again, leaked[0])
    # Everything else still works, and nothing is corrupted.
    d[f"k{m}"] = "plain"
    assert d[f"k{m}"] == "plain"
    d["k0"] = "overwritten"
    del d["k1"]
    assert all((leaked[i] == i).all() for i in range(m))
    assert d._check_integrity() == []
    s = stats(d)
    assert s["pins"] == m and live_holders(s) == {ME: m}
    del leaked, again
    assert_no_pins(d)
    assert np.array_equal(d.view(f"k{m + 1}"), np.full(4, m + 1))
    assert d._check_integrity() == []
    d.close()


def _leak_views(name, out, go):
    d = SharedDict(name, create=False)
    leaked = []
    i = 0
    try:
        while True:
            leaked.append(d.view(f"k{i}"))
            i += 1
    except TooManyViewsError:
        pass
    out.put((os.getpid(), len(leaked), d.get_stats()["max_pins_per_process"]))
    assert go.wait(120)
    os._exit(0)  # leaves without releasing anything


def test_stats_and_cli_show_who_holds_the_pins(name, capsys):
    d = SharedDict(name, size=4 << 20, max_keys=2100)
    for i in range(1100):
        d[f"k{i}"] = np.full(2, i, "i4")
    out, go = CTX.Queue(), CTX.Event()
    p = CTX.Process(target=_leak_views, args=(name, out, go))
    p.start()
    try:
        pid, count, limit = out.get(timeout=120)
        assert pid == p.pid and count == limit
        s = stats(d)
        assert s["pins"] == limit and live_holders(s) == {pid: limit}
        assert d._check_integrity() == []
        mine = d.view("k0")  # the limit is per process
        assert live_holders(stats(d)) == {pid: limit, ME: 1}
        del mine
        d["k0"] = "still writable"
        assert cli_main(["info", name]) == 0
        text, _ = capsys.readouterr()
        assert str(pid) in text and "pin" in text.lower()
        assert cli_main(["info", name, "--json"]) == 0
        info = json.loads(capsys.readouterr()[0])
        assert info["stats"]["pins"] == limit
        assert info["stats"]["pin_holders"] == {str(pid): limit}
        assert info["stats"]["pinned_bytes"] == stats(d)["pinned_bytes"] > 0  # k0 was retired
    finally:
        go.set()
        p.join(60)
    assert p.exitcode == 0
    s = assert_no_pins(d)  # it exited holding them: reclaimed
    assert pid not in s["pin_holders"]
    assert d._check_integrity() == []
    d.close()


# ---------------------------------------------------------------------------
# fork


@pytest.mark.parametrize("drop_inherited", [True, False], ids=["child drops it", "child keeps it"])
def test_views_after_fork(name, drop_inherited):
    d = SharedDict(name, size=4 << 20, max_keys=5000)
    a = np.arange(100_000, dtype="<i4")
    d["a"], d["b"] = a, b"x" * 1000
    v = d.view("a")
    r, w = os.pipe()

    def child():
        nonlocal v
        ok = np.array_equal(v, a)  # the view it inherited
        own, other = d.view("a"), d.view("b")
        ok = ok and np.array_equal(own, a) and other.tobytes() == b"x" * 1000
        holders = live_holders(d.get_stats())
        ok = ok and holders.get(os.getpid()) == 2 and holders.get(parent) == 1
        del own
        if drop_inherited:
            del v
        gc.collect()
        d["a"] = np.zeros(10, "<i4")  # retire the record the parent views
        fill(d, "child")
        if not drop_inherited:
            ok = ok and np.array_equal(v, a)
        os.write(w, b"ok" if ok else b"bad")
        return 0  # exits holding `other` (and maybe v): a dead holder now

    parent = os.getpid()
    pid = fork_child(child)
    os.close(w)
    report = os.read(r, 16) if select.select([r], [], [], 120)[0] else b"timed out"
    os.close(r)
    assert wait_exit(pid) == 0
    assert report == b"ok"
    assert np.array_equal(v, a)  # the parent's view did not change
    assert np.array_equal(d["a"], np.zeros(10, "<i4"))
    s = stats(d)
    assert s["pins"] == 1 and live_holders(s) == {parent: 1} and pid not in s["pin_holders"]
    assert s["pinned_bytes"] >= a.nbytes  # the parent still holds the retired record
    for key in list(d):
        if key.startswith("child"):
            del d[key]
    fill(d)  # the parent's pin still protects it after the child's were reclaimed
    assert np.array_equal(v, a)
    del v
    assert_no_pins(d)
    assert d._check_integrity() == []
    d.close()


def test_a_forked_child_killed_with_views_leaves_the_parents_pin(name):
    d = SharedDict(name, {"a": np.arange(1000)}, size=1 << 20, max_keys=10)
    v = d.view("a")

    def child():
        held = [d.view("a"), v[::2]]  # noqa: F841
        os.kill(os.getpid(), signal.SIGKILL)

    pid = fork_child(child)
    assert wait_exit(pid) == -signal.SIGKILL
    s = stats(d)
    assert s["pins"] == 1 and live_holders(s) == {ME: 1} and pid not in s["pin_holders"]
    d["a"] = "gone"
    assert np.array_equal(v, np.arange(1000))
    del v
    assert_no_pins(d)
    d.close()


# ---------------------------------------------------------------------------
# threads


@pytest.mark.parametrize("seconds", [2, pytest.param(20, marks=pytest.mark.slow)])
def test_threads_take_and_drop_views_while_a_writer_overwrites(name, seconds):
    d = SharedDict(name, size=32 << 20, max_keys=100)
    limit = d.get_stats()["max_pins_per_process"]
    readers = max(2, min(6, limit - 2))
    keys = [f"k{i}" for i in range(4)]
    n = 50_000
    for k in keys:
        d[k] = np.zeros(n, "i4")
    stop = threading.Event()
    errors, counts, writes = [], [], []

    def reader(seed):
        rng = random.Random(seed)
        done = 0
        try:
            while not stop.is_set():
                v = d.view(rng.choice(keys))
                first = int(v[0])
                part = v[rng.randrange(n):][:100]
                if v.min() != first or v.max() != first:
                    errors.append(("torn", first))
                time.sleep(0)
                if int(v[-1]) != first or (part.size and int(part.max()) != first):
                    errors.append(("changed", first))
                del v, part
                done += 1
        except BaseException as exc:
            errors.append(repr(exc))
        counts.append(done)

    def writer():
        i = 0
        try:
            while not stop.is_set():
                i += 1
                k = keys[i % len(keys)]
                if i % 2:
                    d[k] = np.full(n, i, "i4")
                else:
                    with d.create_array(k, n, "i4") as arr:
                        arr[:] = i
        except BaseException as exc:
            errors.append(repr(exc))
        writes.append(i)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(readers)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert errors == []
    assert len(counts) == readers and min(counts) > 0 and writes[0] > 10
    assert d._check_integrity() == []
    assert_no_pins(d)
    d.close()
