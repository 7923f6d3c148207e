"""Many processes on one dict: spawn and fork, barriers, exact totals."""

import multiprocessing as mp
import time

import numpy as np
import pytest

import helpers
from sharedbox import SharedDict

JOIN_TIMEOUT = 120


def join_all(procs):
    for p in procs:
        p.join(JOIN_TIMEOUT)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail(f"process {p.name} did not finish within {JOIN_TIMEOUT}s (deadlock?)")
    assert [p.exitcode for p in procs] == [0] * len(procs)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_spec_producer_consumer_example(name, method):
    ctx = mp.get_context(method)
    producer = SharedDict(name, size=16 * 1024 * 1024, max_keys=10000)
    ts = time.time()
    readings = np.random.rand(1000)
    producer["timestamp"] = ts
    producer["readings"] = readings
    producer["metadata"] = {"sensor_id": "temp_01", "location": "room_a"}
    results = ctx.Queue()
    consumer = ctx.Process(target=helpers.consumer, args=(name, results))
    consumer.start()
    got = results.get(timeout=JOIN_TIMEOUT)
    join_all([consumer])
    assert got[0] == ts
    assert got[1] == pytest.approx(readings.sum())
    assert got[2] == {"sensor_id": "temp_01", "location": "room_a"}
    producer.close()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_four_writers_disjoint_keys_lose_nothing(name, method):
    ctx = mp.get_context(method)
    workers, count = 4, 3000
    d = SharedDict(name, size=32 << 20, max_keys=workers * count)
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=helpers.writer_disjoint, args=(name, w, count, barrier, results))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    join_all(procs)
    assert sorted(results.get(timeout=5)[1] for _ in range(workers)) == list(range(workers))
    assert len(d) == workers * count
    for w in range(workers):
        for i in range(count):
            assert d[f"w{w}_{i}"] == (w, i, "x" * (i % 50))
    assert d._check_integrity() == []
    d.close()


def test_overwriting_one_key_never_shows_a_torn_value(name):
    ctx = mp.get_context("spawn")
    writers, readers = 2, 2
    d = SharedDict(name, size=16 << 20, max_keys=10)
    helpers_value = (0, 0, bytes([0]) * 1000)
    d["hot"] = helpers_value
    barrier = ctx.Barrier(writers + readers)
    results = ctx.Queue()
    procs = [ctx.Process(target=helpers.overwriter, args=(name, w, 3000, barrier)) for w in range(writers)]
    procs += [ctx.Process(target=helpers.reader_checker, args=(name, 3.0, barrier, results)) for _ in range(readers)]
    for p in procs:
        p.start()
    join_all(procs)
    stats = [results.get(timeout=5) for _ in range(readers)]
    assert all(reads > 0 for reads, _ in stats)
    assert sum(torn for _, torn in stats) == 0
    assert d._check_integrity() == []
    d.close()


def test_counters_in_many_processes(name):
    ctx = mp.get_context("spawn")
    workers = 4
    d = SharedDict(name, size=4 << 20, max_keys=100, stripes=1)  # all on one lock
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=helpers.counter_worker, args=(name, w, 2000, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    join_all(procs)
    assert {k: d[k] for k in d} == {f"k{w}": 1999 for w in range(workers)}
    d.close()


def test_shared_dict_passes_to_a_spawned_process_as_a_handle(name):
    ctx = mp.get_context("spawn")
    d = SharedDict(name, {"a": 1}, size=1 << 20)
    results = ctx.Queue()
    p = ctx.Process(target=helpers.attach_and_report, args=(name, results))
    p.start()
    assert results.get(timeout=JOIN_TIMEOUT) == ("ok", {"a": 1})
    join_all([p])
    d.close()


def test_a_killed_writer_does_not_deadlock_others(name):
    """SIGKILL a process while it holds a stripe lock mid-copy; the next
    process recovers the lock and the data stays whole."""
    ctx = mp.get_context("spawn")
    d = SharedDict(name, size=64 << 20, max_keys=200, stripes=1)
    for round_ in range(5):
        ready = ctx.Event()
        p = ctx.Process(target=helpers.big_writer_forever, args=(name, ready))
        p.start()
        assert ready.wait(JOIN_TIMEOUT)
        time.sleep(0.05 + 0.037 * round_)
        p.kill()
        p.join(JOIN_TIMEOUT)
        start = time.monotonic()
        d["after"] = round_  # needs the (possibly orphaned) stripe lock
        assert time.monotonic() - start < 1.0
        big = d.get("big")
        assert big is None or (len(big) == 4 << 20 and big.count(big[:1]) == len(big))
        assert d._check_integrity() == []
        assert len(d) == len(d.keys_atomic())
    d.close()


def test_keys_atomic_is_a_point_in_time_snapshot(name):
    """One process inserts k0, k1, ... and deletes from the front; every
    keys_atomic() taken meanwhile must be one contiguous range."""
    ctx = mp.get_context("spawn")
    d = SharedDict(name, size=8 << 20, max_keys=200, stripes=16)
    barrier = ctx.Barrier(2)
    p = ctx.Process(target=helpers.sliding_window, args=(name, 20_000, 50, barrier))
    p.start()
    barrier.wait()
    snapshots = 0
    while p.is_alive():
        ids = sorted(int(k[1:]) for k in d.keys_atomic())
        if ids:
            assert ids == list(range(ids[0], ids[0] + len(ids))), ids
            assert len(ids) in (50, 51) or ids[0] == 0
            snapshots += 1
    join_all([p])
    assert snapshots > 10
    d.close()


def test_len_counts_the_keys_present_at_one_instant(name):
    """While one process inserts k0, k1, ... and deletes from the front, the
    dict always holds 50 or 51 keys (once it has 50).  A len() that summed the
    stripes' counts one after another could see a delete in one stripe but not
    the insert before it in another, and answer 49."""
    ctx = mp.get_context("spawn")
    d = SharedDict(name, size=8 << 20, max_keys=200, stripes=64)
    barrier = ctx.Barrier(2)
    p = ctx.Process(target=helpers.sliding_window, args=(name, 60_000, 50, barrier))
    p.start()
    barrier.wait()
    seen, full = [], False
    while p.is_alive():
        n = len(d)
        full = full or n >= 50
        if full:
            seen.append(n)
    join_all([p])
    assert len(seen) > 100
    assert set(seen) <= {50, 51}, sorted(set(seen))
    assert len(d) == 50
    d.close()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pool_tasks_receive_the_dict_as_an_argument(name, method):
    ctx = mp.get_context(method)
    d = SharedDict(name, size=1 << 20, max_keys=100)
    with ctx.Pool(2) as pool:
        replies = pool.starmap(helpers.pool_square, [(d, i) for i in range(20)], chunksize=1)
    assert {k: d[k] for k in d} == {f"sq{i}": i * i for i in range(20)}
    # Each task attached to the same segment by name; none created one.
    assert {(seg, created) for _, seg, created in replies} == {(name, False)}
    assert len({pid for pid, _, _ in replies}) <= 2
    assert d._check_integrity() == []
    d.close()


RESOURCE_TRACKER_SCRIPT = """
import multiprocessing as mp
import sys

import helpers
from sharedbox import SharedDict

if __name__ == "__main__":
    name, method = sys.argv[1], sys.argv[2]
    ctx = mp.get_context(method)
    d = SharedDict(name, size=1 << 20, max_keys=100)
    p = ctx.Process(target=helpers.write_and_exit, args=(d, "child"))
    p.start()
    p.join(60)
    with ctx.Pool(2) as pool:
        pool.starmap(helpers.pool_square, [(d, i) for i in range(8)])
    print(len(d), p.exitcode)
    # The creator exits without close() or unlink(): the segment must stay.
"""


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_no_resource_tracker_warning_and_no_unlink_at_exit(name, method, tmp_path):
    """Unlike multiprocessing.shared_memory, a SharedDict is not registered
    with the resource tracker: no "leaked shared_memory" warning, and nobody
    unlinks the segment when a process (child or creator) exits."""
    import os
    import subprocess
    import sys

    script = tmp_path / "owner.py"
    script.write_text(RESOURCE_TRACKER_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(helpers.__file__))
    proc = subprocess.run(
        [sys.executable, "-W", "always", str(script), name, method],
        capture_output=True, text=True, timeout=JOIN_TIMEOUT, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["9", "0"]
    assert "resource_tracker" not in proc.stderr and "leaked" not in proc.stderr
    assert proc.stderr == ""
    assert os.path.exists(f"/dev/shm/{name}")
    d = SharedDict(name, create=False)
    assert d["sq7"] == 49 and isinstance(d["child"], int)
    d.close()  # the fixture unlinks
