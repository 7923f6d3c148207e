"""`python -m sharedbox demo`: several processes sharing one SharedDict.

A producer publishes sensor readings (with a NumPy array) while consumer
processes read them, then all processes bump per-worker counters; the parent
checks the totals and prints what happened and how fast.

The demo only ever uses a segment it creates itself, and removes only that
one.  Its child processes give up after CHILD_TIMEOUT seconds and exit as soon
as the demo process is gone, so a failure never leaves them spinning.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import queue
import sys
import time
from typing import Any, Optional

from ._dict import SharedDict
from .errors import SegmentNotFoundError, SegmentReplacedError

READINGS = 200
WORKERS = 3
COUNTS = 20_000
CHILD_TIMEOUT = 60.0  # seconds a child may run in all before it gives up


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


class _Watch:
    """A child's lifeline: exits the child once its parent (the demo process)
    is gone or its time is up."""

    def __init__(self, parent_pid: int, timeout: float) -> None:
        self.parent_pid = parent_pid
        self.deadline = time.monotonic() + timeout

    def check(self) -> None:
        if os.getppid() != self.parent_pid:
            sys.exit("sharedbox demo child: the demo process is gone; exiting")
        if time.monotonic() > self.deadline:
            sys.exit("sharedbox demo child: gave up waiting (timeout)")

    def wait(self, event: Any) -> None:
        while not event.wait(0.1):
            self.check()


def _producer(name: str, start, parent_pid: int, timeout: float = CHILD_TIMEOUT) -> None:
    watch = _Watch(parent_pid, timeout)
    d = SharedDict(name, create=False)
    watch.wait(start)
    for i in range(READINGS):
        watch.check()
        d[f"reading/{i}"] = {"sensor": f"temp_{i % 4:02d}", "celsius": 20 + i % 7}
        d["latest_frame"] = _frame(i)  # 512 KiB, replaced each time
        d["produced"] = i + 1
    d.close()


def _consumer(name: str, worker: int, start, out, parent_pid: int,
              timeout: float = CHILD_TIMEOUT) -> None:
    watch = _Watch(parent_pid, timeout)
    d = SharedDict(name, create=False)
    watch.wait(start)
    seen = frames = 0
    while d.get("produced", 0) < READINGS or seen < READINGS:
        watch.check()  # the producer may have failed: never spin forever
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


def start_children(ctx: Any, name: str) -> tuple[list[Any], Any, Any]:
    """Starts the producer and the consumers, all waiting for the start event:
    (processes, start event, results queue)."""
    start = ctx.Event()
    out = ctx.Queue()
    me = os.getpid()
    procs = [ctx.Process(target=_producer, args=(name, start, me))]
    procs += [ctx.Process(target=_consumer, args=(name, w, start, out, me))
              for w in range(WORKERS)]
    for p in procs:
        p.start()
    return procs, start, out


def _collect(procs: list[Any], out: Any) -> Optional[list[tuple]]:
    """The consumers' results, or None as soon as a child fails or time is up."""
    results: list[tuple] = []
    deadline = time.monotonic() + CHILD_TIMEOUT + 10
    while len(results) < WORKERS:
        try:
            results.append(out.get(timeout=0.2))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                return None
    for p in procs:
        p.join(10)
    if any(p.exitcode != 0 for p in procs):
        return None
    return results


def _stop(procs: list[Any]) -> None:
    """Ends the children that are still running (after a failure or Ctrl-C)."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


def run(name: Optional[str] = None) -> int:
    name = name or f"sharedbox_demo_{os.getpid()}"
    exists = FileExistsError(
        errno.EEXIST,
        f"a segment named {name!r} exists already; the demo only uses a segment it "
        "creates (choose another --name)",
    )
    if os.path.exists(os.path.join("/dev/shm", name)):
        raise exists
    print(f"creating SharedDict {name!r} (16 MiB, up to 1000 keys) in /dev/shm")
    d = SharedDict(name, size=16 << 20, max_keys=1000)
    if not d.created:  # created by someone else since the check above
        d.close()
        raise exists
    procs: list[Any] = []
    try:
        ctx = mp.get_context("spawn")
        procs, start, out = start_children(ctx, name)
        print(f"started 1 producer and {WORKERS} consumer processes (spawn)")
        t0 = time.perf_counter()
        start.set()
        results = _collect(procs, out)
        elapsed = time.perf_counter() - t0
        if results is None:
            failed = sum(p.exitcode not in (None, 0) for p in procs)
            print(f"FAILED: {failed} process(es) exited with an error, or time ran out")
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
        _stop(procs)
        d.close()
        try:
            d.unlink()  # only the segment created above: unlink() checks its identity
        except (SegmentNotFoundError, SegmentReplacedError):
            print(f"closed {name!r}; someone else removed it meanwhile")
        else:
            print(f"closed and unlinked {name!r}")
