"""Large NumPy arrays between processes, and how fast they move.

The parent writes 16 MiB float32 frames (2048 x 2048) into one key of a
SharedDict, each frame filled with its own number; a spawned reader process
reads the key as fast as it can and checks that every frame it gets is whole
(all elements equal: a torn frame would mix two numbers).  An array is stored
as dtype + shape + raw bytes, so a set is one copy into shared memory and a
get one copy out, with no pickling.  At the end both sides report their
bandwidth next to that of a plain in-process copy (arr.copy()).

    python examples/numpy_frames.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import numpy as np

from sharedbox import InsufficientSharedMemoryError, SharedDict

SHAPE = (2048, 2048)
FRAME_BYTES = SHAPE[0] * SHAPE[1] * 4
FRAMES = 60


def gbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.1f} GB/s" if seconds > 0 else "n/a"


def reader(d: SharedDict, ready: Event, done: Event, results: Queue[Any]) -> None:
    d["frame"]  # the first read maps the pages into this process: not timed
    ready.set()
    reads = torn = 0
    seen = set()
    busy = 0.0
    while True:
        finished = done.is_set()  # read once more after the writer is done
        t0 = time.perf_counter()
        frame = d["frame"]
        busy += time.perf_counter() - t0
        reads += 1
        first = frame[0, 0]
        if frame.shape != SHAPE or frame.dtype != np.float32 or not (frame == first).all():
            torn += 1
        seen.add(int(first))
        if finished:
            break
    results.put((reads, torn, len(seen), int(first), busy))
    d.close()


def main() -> int:
    name = f"numpy_frames_{os.getpid()}"
    # A replaced value is freed only after its successor is written, so two
    # frames must fit at once: 2 x 16 MiB plus a little for the index.
    try:
        d = SharedDict(name, size=40 * 1024 * 1024, max_keys=16)
    except InsufficientSharedMemoryError as exc:
        print(f"not enough shared memory: {exc}")
        print("(in Docker, start the container with a larger --shm-size)")
        return 1
    print(f"created SharedDict {name!r} of {d.segment_size >> 20} MiB")
    try:
        ctx = mp.get_context("spawn")
        ready, done = ctx.Event(), ctx.Event()
        results: Queue[Any] = ctx.Queue()
        frame = np.zeros(SHAPE, dtype=np.float32)
        # Two untimed writes: the first use of each of the two places a
        # frame alternates between faults its pages in.
        d["frame"] = frame
        d["frame"] = frame
        proc = ctx.Process(target=reader, args=(d, ready, done, results))
        proc.start()
        if not ready.wait(60):
            print("FAILED: the reader process did not start")
            return 1

        write_busy = 0.0
        for i in range(FRAMES):
            frame.fill(i)
            t0 = time.perf_counter()
            d["frame"] = frame
            write_busy += time.perf_counter() - t0
        done.set()
        reads, torn, distinct, last, read_busy = results.get(timeout=60)
        proc.join(60)
        if proc.exitcode != 0:
            print("FAILED: the reader process exited with an error")
            return 1

        t0 = time.perf_counter()
        for _ in range(10):
            frame.copy()
        copy_seconds = (time.perf_counter() - t0) / 10

        back = d["frame"]
        print(f"wrote {FRAMES} frames of {FRAME_BYTES >> 20} MiB "
              f"({back.dtype}, shape {back.shape}) into one key")
        print(f"reader process: {reads} reads, {distinct} different frames seen, "
              f"{torn} torn, last frame {last}")
        print(f"set: {gbps(FRAMES * FRAME_BYTES, write_busy)}, "
              f"get (other process): {gbps(reads * FRAME_BYTES, read_busy)}, "
              f"arr.copy() here: {gbps(FRAME_BYTES, copy_seconds)}")
        ok = torn == 0 and last == FRAMES - 1 and int(back[0, 0]) == FRAMES - 1
        print("every frame whole" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        d.close()
        d.unlink()
        print(f"closed and unlinked {name!r}")


if __name__ == "__main__":
    sys.exit(main())
