"""`python -m sharedbox demo`: several processes sharing one SharedDict.

A producer publishes sensor readings (with a NumPy array) while consumer
processes read them, then all processes bump per-worker counters; the parent
checks the totals and prints what happened and how fast.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

from ._dict import SharedDict

READINGS = 200
WORKERS = 3
COUNTS = 20_000


def _frame(i: int):
    """A 512 KiB frame: a NumPy array when NumPy is installed, else bytes."""
    try:
        import numpy as np
    except ImportError:
        return bytes([i % 256]) * (512 << 10)
    return np.random.default_rng(i).random((256, 256))


def _frame_ok(frame) -> bool:
    if isinstance(frame, bytes):
        return len(frame) == 512 << 10 and frame.count(frame[:1]) == len(frame)
    return frame.shape == (256, 256)


def _producer(name: str, start) -> None:
    d = SharedDict(name, create=False)
    start.wait()
    for i in range(READINGS):
        d[f"reading/{i}"] = {"sensor": f"temp_{i % 4:02d}", "celsius": 20 + i % 7}
        d["latest_frame"] = _frame(i)  # 512 KiB, replaced each time
        d["produced"] = i + 1
    d.close()


def _consumer(name: str, worker: int, start, out) -> None:
    d = SharedDict(name, create=False)
    start.wait()
    seen = frames = 0
    while d.get("produced", 0) < READINGS or seen < READINGS:
        if f"reading/{seen}" in d:
            seen += 1
        frame = d.get("latest_frame")
        if frame is not None:
            assert _frame_ok(frame), "torn frame"
            frames += 1
    # Counters: each worker owns a key, so no update is lost.
    t0 = time.perf_counter()
    key = f"counter/{worker}"
    for _ in range(COUNTS):
        d[key] = d.get(key, 0) + 1
    elapsed = time.perf_counter() - t0
    out.put((worker, seen, frames, elapsed))
    d.close()


def run(name: str | None = None) -> int:
    name = name or f"sharedbox_demo_{os.getpid()}"
    ctx = mp.get_context("spawn")
    print(f"creating SharedDict {name!r} (16 MiB, up to 1000 keys) in /dev/shm")
    d = SharedDict(name, size=16 << 20, max_keys=1000)
    try:
        start = ctx.Event()
        out = ctx.Queue()
        procs = [ctx.Process(target=_producer, args=(name, start))]
        procs += [ctx.Process(target=_consumer, args=(name, w, start, out)) for w in range(WORKERS)]
        for p in procs:
            p.start()
        print(f"started 1 producer and {WORKERS} consumer processes (spawn)")
        t0 = time.perf_counter()
        start.set()
        results = [out.get(timeout=120) for _ in range(WORKERS)]
        for p in procs:
            p.join(60)
        elapsed = time.perf_counter() - t0
        failed = [p for p in procs if p.exitcode != 0]
        if failed:
            print(f"FAILED: {len(failed)} process(es) exited with an error")
            return 1
        try:
            import numpy  # noqa: F401

            kind = "256x256 float64 NumPy frames"
        except ImportError:
            kind = "512 KiB byte frames (install numpy to share arrays)"
        print(f"producer wrote {READINGS} readings and {READINGS} {kind}")
        for worker, seen, frames, secs in sorted(results):
            print(
                f"consumer {worker}: saw all {seen} readings, read {frames} whole frames, "
                f"then {COUNTS} read-modify-writes in {secs * 1000:.0f} ms "
                f"({secs / COUNTS / 2 * 1e9:.0f} ns per get or set)"
            )
        counters = {k: d[k] for k in d if k.startswith("counter/")}
        total = sum(counters.values())
        print(f"counters: {counters} -> total {total} (expected {WORKERS * COUNTS})")
        print(f"latest frame intact: {_frame_ok(d['latest_frame'])}; produced = {d['produced']}")
        stats = d.get_stats()
        print(
            f"{stats['total_entries']} keys, {stats['bytes_used']} of "
            f"{stats['segment_size']} bytes used; all done in {elapsed:.2f} s"
        )
        return 0 if total == WORKERS * COUNTS else 1
    finally:
        d.close()
        d.unlink()
        print(f"closed and unlinked {name!r}")
