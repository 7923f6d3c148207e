"""Atomic updates, named locks and waiting for changes (SharedDict.incr,
compare_and_set, lock, version, wait, wait_async).  Concurrency tests use
spawned processes started at a barrier, with exact totals."""

import asyncio
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from sharedbox import (
    MISSING,
    SegmentNotFoundError,
    SharedDict,
    SharedDictClosedError,
    SharedLock,
    TooManyLocksError,
)

CTX = mp.get_context("spawn")


# ---------------------------------------------------------------------------
# incr

def test_incr_semantics(sd):
    assert sd.incr("n") == 1 and type(sd["n"]) is int
    assert sd.incr("n", 41) == 42
    assert sd.incr("n", -50) == -8
    assert sd.incr("f", 0.5) == 0.5 and type(sd["f"]) is float
    assert sd.incr("n", 0.5) == -7.5 and type(sd["n"]) is float  # a float on either side
    sd["i"] = 2
    assert sd.incr("i", 1.5) == 3.5


def test_incr_overflow_leaves_the_dict_unchanged(sd):
    sd["big"] = 2**63 - 1
    v = sd.version("big")
    with pytest.raises(OverflowError):
        sd.incr("big")
    assert sd["big"] == 2**63 - 1 and sd.version("big") == v
    sd["small"] = -(2**63)
    with pytest.raises(OverflowError):
        sd.incr("small", -1)
    with pytest.raises(OverflowError):
        sd.incr("new", 2**63)
    assert "new" not in sd


@pytest.mark.parametrize("stored", ["3", b"3", [3], True, None, np.int64(3), 2**70])
def test_incr_refuses_a_stored_value_that_is_not_a_number(sd, stored):
    sd["k"] = stored
    with pytest.raises(TypeError, match="not an int or a float"):
        sd.incr("k")
    assert sd["k"] == stored or (stored is None and sd["k"] is None)


@pytest.mark.parametrize("delta", ["1", b"1", None, True, [1], 1j])
def test_incr_refuses_a_delta_that_is_not_a_number(sd, delta):
    with pytest.raises(TypeError):
        sd.incr("k", delta)
    assert "k" not in sd


def _incr_worker(name, barrier, n, plain):
    d = SharedDict(name, create=False)
    barrier.wait()
    for _ in range(n):
        if plain:
            d["plain"] += 1  # read, then write: updates from other processes get lost
        else:
            d.incr("atomic")
    d.close()


@pytest.mark.parametrize("plain", [False, True], ids=["incr", "plain +="])
def test_four_processes_count_exactly_with_incr(name, plain):
    """4 processes x 100,000 increments: incr gives the exact total.  The same
    with d[k] += 1 loses updates, which is why incr exists."""
    n, procs = 100_000, 4
    d = SharedDict(name, {"plain": 0}, size=4 << 20, max_keys=100)
    barrier = CTX.Barrier(procs)
    ps = [CTX.Process(target=_incr_worker, args=(name, barrier, n, plain)) for _ in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(300)
        assert p.exitcode == 0
    if plain:
        assert d["plain"] < n * procs  # lost updates (2 cores, 400,000 overlapping writes)
    else:
        assert d["atomic"] == n * procs
    assert d._check_integrity() == []
    d.close()


# ---------------------------------------------------------------------------
# compare_and_set

def test_compare_and_set_exact_type_and_content(sd):
    assert sd.compare_and_set("k", MISSING, 1) is True
    assert sd.compare_and_set("k", MISSING, 2) is False
    assert sd["k"] == 1
    for other in (1.0, True, "1", b"\x01", np.int64(1)):
        assert sd.compare_and_set("k", other, 99) is False
    assert sd["k"] == 1
    assert sd.compare_and_set("k", 1, "one") is True and sd["k"] == "one"
    assert sd.compare_and_set("absent", None, 1) is False  # None is a value, not MISSING
    sd["none"] = None
    assert sd.compare_and_set("none", None, 0) is True and sd["none"] == 0
    sd["d"] = {"a": [1, 2]}
    assert sd.compare_and_set("d", {"a": [1, 2]}, "x") is True  # pickles compare by bytes


def test_compare_and_set_arrays_by_dtype_shape_and_bytes(sd):
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    sd["a"] = a
    assert not sd.compare_and_set("a", a.astype(np.int32), 0)
    assert not sd.compare_and_set("a", a.reshape(4, 3), 0)
    assert not sd.compare_and_set("a", a + 1, 0)
    assert not sd.compare_and_set("a", np.asfortranarray(a), 0)
    assert sd.compare_and_set("a", a.copy(), "replaced") and sd["a"] == "replaced"


def _cas_worker(name, barrier, n):
    d = SharedDict(name, create=False)
    barrier.wait()
    done = 0
    while done < n:  # the retry loop the guide shows
        cur = d["n"]
        if d.compare_and_set("n", cur, cur + 1):
            done += 1
    d.close()


def test_compare_and_set_retry_loop_counts_exactly(name):
    d = SharedDict(name, {"n": 0}, size=1 << 20, max_keys=10)
    barrier = CTX.Barrier(3)
    ps = [CTX.Process(target=_cas_worker, args=(name, barrier, 5000)) for _ in range(3)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(300)
        assert p.exitcode == 0
    assert d["n"] == 15000
    d.close()


# ---------------------------------------------------------------------------
# version

def test_version_changes_on_every_write_and_delete(sd):
    assert sd.version("k") is None
    seen = set()
    for value in (1, 1, "x", [1]):
        sd["k"] = value
        v = sd.version("k")
        assert isinstance(v, int) and v not in seen
        seen.add(v)
    sd.incr("n")
    del sd["k"]
    assert sd.version("k") is None
    sd["k"] = 1
    assert sd.version("k") not in seen
    assert sd.compare_and_set("k", 2, 3) is False and sd.version("k") not in seen


# ---------------------------------------------------------------------------
# lock

def test_lock_basics(sd):
    lock = sd.lock()
    assert isinstance(lock, SharedLock) and lock.name == "default"
    assert not lock.locked()
    with lock:
        assert lock.locked() and lock.recovered is False
        other = threading.Thread(target=lambda: result.append(sd.lock().acquire(timeout=0.05)))
        result = []
        other.start()
        other.join()
        assert result == [False]
        with pytest.raises(RuntimeError):  # not reentrant
            lock.acquire(timeout=0)
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()
    assert lock.acquire(timeout=0) is True
    t = threading.Thread(target=lambda: errors.append(_release(lock)))
    errors = []
    t.start()
    t.join()
    assert errors == ["RuntimeError"]  # another thread cannot release it
    lock.release()


def _release(lock):
    try:
        lock.release()
    except RuntimeError:
        return "RuntimeError"
    return "released"


def test_lock_names_are_bounded(sd):
    locks = [sd.lock(f"lock{i}") for i in range(31)]  # + "default" below = 32
    sd.lock("default")
    with pytest.raises(TooManyLocksError, match="32 named locks"):
        sd.lock("one more")
    assert sd.lock("lock7").name == locks[7].name
    with pytest.raises(ValueError):
        sd.lock("x" * 44)
    with pytest.raises(ValueError):
        sd.lock("")
    with pytest.raises(ValueError):
        sd.lock("\ud800")
    with pytest.raises(TypeError):
        sd.lock(5)


def test_lock_waiter_uses_no_gil(sd):
    """A thread waiting for the lock lets other threads run."""
    lock = sd.lock()
    lock.acquire()
    ticks = []
    waiter = threading.Thread(target=lambda: ticks.append(lock.acquire(timeout=0.5)))
    waiter.start()
    count = 0
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        count += 1
    waiter.join()
    assert ticks == [False] and count > 1000
    lock.release()


def _lock_then_die(name, ready):
    d = SharedDict(name, create=False)
    d.lock("jobs").acquire()
    d["holder"] = os.getpid()
    ready.set()
    time.sleep(60)


def test_lock_holder_killed_inside_the_lock(name):
    d = SharedDict(name, size=1 << 20, max_keys=10)
    ready = CTX.Event()
    p = CTX.Process(target=_lock_then_die, args=(name, ready))
    p.start()
    assert ready.wait(60)
    lock = d.lock("jobs")
    assert lock.locked() and lock.acquire(timeout=0.1) is False
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert lock.acquire(timeout=10) is True
    assert lock.recovered is True
    lock.release()
    assert lock.acquire(timeout=1) is True and lock.recovered is False
    lock.release()
    d.close()


# ---------------------------------------------------------------------------
# wait

def test_wait_returns_the_new_version(sd):
    sd["k"] = 1
    v = sd.version("k")

    def write():
        time.sleep(0.1)
        sd["k"] = 2

    threading.Thread(target=write).start()
    new = sd.wait("k", v, timeout=30)
    assert new == sd.version("k") != v
    assert sd.wait("k", v, timeout=0) == new  # already different: returns at once
    threading.Thread(target=lambda: (time.sleep(0.1), sd.pop("k"))).start()
    assert sd.wait("k", timeout=30) is None  # deleted
    threading.Thread(target=lambda: (time.sleep(0.1), sd.__setitem__("k", 3))).start()
    assert sd.wait("k", None, timeout=30) == sd.version("k")  # appeared


def test_wait_times_out(sd):
    sd["k"] = 1
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        sd.wait("k", timeout=0.2)
    assert time.monotonic() - start >= 0.2
    with pytest.raises(ValueError):
        sd.wait("k", timeout=-1)
    with pytest.raises(TypeError):
        sd.wait("k", "v1")


def test_wait_on_a_closed_or_unlinked_dict(name):
    d = SharedDict(name, {"k": 1}, size=1 << 20, max_keys=10)
    errors = []

    def waiter():
        try:
            d.wait("k", timeout=30)
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    d.close()  # from another thread, while it waits
    t.join(10)
    assert not t.is_alive() and isinstance(errors[0], SharedDictClosedError)
    with pytest.raises(SharedDictClosedError):
        d.wait("k")

    d = SharedDict(name, create=False)
    errors.clear()
    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    os.unlink(f"/dev/shm/{name}")  # unlinked by someone else while it waits
    t.join(10)
    assert not t.is_alive() and isinstance(errors[0], SegmentNotFoundError)
    d.close()


WAITER = textwrap.dedent(
    r'''
    import signal, sys
    from sharedbox import SharedDict
    # Python leaves SIGINT ignored when it starts with it ignored, as a
    # command started in the background by a non-interactive shell does
    # (`.ci/run &`): then no KeyboardInterrupt could ever come.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    d = SharedDict(sys.argv[1], create=False)
    print("waiting", flush=True)
    try:
        d.wait("k")
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    '''
)


def test_wait_can_be_interrupted(name):
    d = SharedDict(name, {"k": 1}, size=1 << 20, max_keys=10)
    p = subprocess.Popen([sys.executable, "-c", WAITER, name], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=10)
    assert out.strip() == "interrupted"
    d.close()


def test_killed_waiter_leaves_nothing_behind(name):
    d = SharedDict(name, {"k": 1}, size=1 << 20, max_keys=10)
    p = subprocess.Popen([sys.executable, "-c", WAITER, name], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(0.2)
    p.kill()
    p.wait(10)
    v = d.version("k")
    d["k"] = 2  # wakes nobody; clears the sleeper mark
    assert d.version("k") != v and d._check_integrity() == []
    threading.Thread(target=lambda: (time.sleep(0.1), d.__setitem__("k", 3))).start()
    assert d.wait("k", timeout=30) == d.version("k")
    d.close()


PONG = textwrap.dedent(
    r'''
    import sys, time
    from sharedbox import SharedDict
    d = SharedDict(sys.argv[1], create=False)
    rounds, slice_s = int(sys.argv[2]), float(sys.argv[3])
    seen = d.version("ping")
    print("ready", flush=True)
    for i in range(1, rounds + 1):
        start = time.monotonic()
        changed, seen = d._wait_slice("ping", seen, slice_s)
        if time.monotonic() - start > slice_s / 2:
            print(f"round {i}: the wait lasted until its slice ran out", flush=True)
            sys.exit(1)
        d["pong"] = i
    print("done", flush=True)
    '''
)


def test_no_wake_up_is_lost(name):
    """A waiter process answers pings through wait(); the pinger polls for the
    answer and pings again at once, so its write lands, round after round,
    anywhere from before the waiter's look at the version to after it went
    to sleep, including between the two (where a write must find the
    waiter's mark, or the waiter must find the write).  The waiter sleeps in
    single futex slices of 10 s: a lost wake-up shows as a wait that lasted
    until its slice ran out, where a round trip takes microseconds (a
    liveness check, not a speed one)."""
    rounds, slice_s = 20000, 10.0
    d = SharedDict(name, {"ping": 0, "pong": 0}, size=1 << 20, max_keys=10, stripes=1)
    p = subprocess.Popen([sys.executable, "-c", PONG, name, str(rounds), str(slice_s)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        for i in range(1, rounds + 1):
            d["ping"] = i
            deadline = time.monotonic() + 2 * slice_s
            while d["pong"] != i:
                assert p.poll() is None, p.stdout.read()
                assert time.monotonic() < deadline, f"round {i}: no answer"
        assert p.stdout.readline().strip() == "done"
        assert p.wait(30) == 0
    finally:
        p.kill()
    d.close()


def _waiter_proc(name, keys, rounds, barrier, out):
    d = SharedDict(name, create=False)
    seen = {k: d.version(k) for k in keys}
    barrier.wait()
    got = []
    for _ in range(rounds):
        for k in keys:
            new = d.wait(k, seen[k], timeout=60)
            seen[k] = new
            got.append((k, d[k]))
            d.incr("ack:" + k)
    out.put(got)
    d.close()


def test_many_waiters_on_many_keys_see_every_change(name):
    """4 waiter processes, 3 keys each; the writer changes one key at a time and
    waits for its waiter's ack before changing it again, so every change must be
    seen, and seen by its own waiter only."""
    d = SharedDict(name, size=4 << 20, max_keys=200, stripes=4)
    groups = [[f"w{p}k{i}" for i in range(3)] for p in range(4)]
    for keys in groups:
        for k in keys:
            d[k] = 0
            d["ack:" + k] = 0
    rounds = 20
    barrier = CTX.Barrier(5)
    out = CTX.Queue()
    ps = [CTX.Process(target=_waiter_proc, args=(name, keys, rounds, barrier, out))
          for keys in groups]
    for p in ps:
        p.start()
    barrier.wait()
    for r in range(1, rounds + 1):
        for i in range(3):
            for keys in groups:  # one change per waiter at a time, all waiters in parallel
                d[keys[i]] = r
            for keys in groups:
                ack = "ack:" + keys[i]
                v = d.version(ack)  # version first, then read: no change slips between
                while d[ack] < r:
                    v = d.wait(ack, v, timeout=60)
    results = [out.get(timeout=120) for _ in ps]
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    for got in results:
        keys = sorted({k for k, _ in got})
        for k in keys:
            assert [v for kk, v in got if kk == k] == list(range(1, rounds + 1))
    d.close()


def test_wait_async_does_not_block_the_event_loop(sd):
    sd["k"] = 1

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        waiting = asyncio.create_task(sd.wait_async("k", timeout=30))
        await asyncio.sleep(0.2)
        sd["k"] = 2
        new = await waiting
        t.cancel()
        # cancelling a wait_async ends it
        pending = asyncio.create_task(sd.wait_async("k", timeout=30))
        await asyncio.sleep(0.05)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        return new, ticks

    new, ticks = asyncio.run(main())
    assert new == sd.version("k") and ticks >= 10


def test_waiting_process_does_not_spin(name):
    """Not a speed test: a waiter that polled would burn a core.  The
    benchmark suite measures the real figure."""
    d = SharedDict(name, {"k": 1}, size=1 << 20, max_keys=10)
    script = textwrap.dedent(
        f'''
        import resource, time
        from sharedbox import SharedDict
        d = SharedDict({name!r}, create=False)
        try:
            d.wait("k", timeout=1.0)
        except TimeoutError:
            pass
        r = resource.getrusage(resource.RUSAGE_SELF)
        print(r.ru_utime + r.ru_stime)
        '''
    )
    before = subprocess.run([sys.executable, "-c", "import resource, sharedbox; r = resource.getrusage(resource.RUSAGE_SELF); print(r.ru_utime + r.ru_stime)"],
                            capture_output=True, text=True, check=True)
    after = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True)
    waiting_cpu = float(after.stdout) - float(before.stdout)
    assert waiting_cpu < 0.25, waiting_cpu  # a second of polling would be ~1.0
    d.close()
