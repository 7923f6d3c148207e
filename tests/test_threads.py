"""Many threads of one process, on one handle and on several."""

import threading
import time

import pytest

from sharedbox import SharedDict, SharedDictClosedError


def run_threads(target, n, *args):
    errors = []

    def wrapped(i):
        try:
            target(i, *args)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "thread did not finish (deadlock?)"
    return errors


def test_threads_on_one_handle(name):
    sd = SharedDict(name, size=8 << 20, max_keys=4000)

    def work(i):
        for j in range(500):
            sd[f"t{i}_{j}"] = (i, j)
            assert sd[f"t{i}_{j}"] == (i, j)
            if j % 3 == 0:
                del sd[f"t{i}_{j}"]

    assert run_threads(work, 8) == []
    assert len(sd) == 8 * (500 - 167)
    assert sd._check_integrity() == []
    sd.close()


def test_threads_on_separate_handles(name):
    handles = [SharedDict(name, size=8 << 20, max_keys=5000) for _ in range(4)]

    def work(i):
        d = handles[i]
        for j in range(500):
            d[f"h{i}_{j}"] = "v" * j
        for j in range(500):
            assert handles[(i + 1) % 4].get(f"h{i}_{j}") == "v" * j

    assert run_threads(work, 4) == []
    assert len(handles[0]) == 2000
    for h in handles:
        h.close()


def test_gil_is_released_during_large_copies(name):
    d = SharedDict(name, size=512 << 20)
    big = b"x" * (200 << 20)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        time.sleep(0.01)
        before = len(ticks)
        for _ in range(3):
            d["big"] = big
            assert len(d["big"]) == len(big)
        during = len(ticks) - before
    finally:
        stop.set()
        t.join()
    # Six copies of 200 MB take well over 10 ms; a ticker starved by a held
    # GIL would get at most a few ticks in.
    assert during > 10
    d.close()


def test_close_while_other_threads_operate(name):
    for _ in range(5):
        d = SharedDict(name, size=64 << 20, max_keys=1000)
        d["big"] = b"z" * (8 << 20)
        start = threading.Event()

        def work(i):
            start.wait()
            try:
                for j in range(2000):
                    if i % 2:
                        d[f"k{i}_{j % 50}"] = j
                    else:
                        v = d.get("big")
                        assert v is None or len(v) == 8 << 20
            except SharedDictClosedError:
                pass  # the clear error after close

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        start.set()
        time.sleep(0.005)
        d.close()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        with pytest.raises(SharedDictClosedError):
            d["x"]
        d2 = SharedDict(name, create=False)
        assert d2._check_integrity() == []
        d2.close()
        d2.unlink()
