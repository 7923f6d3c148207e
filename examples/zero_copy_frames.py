"""NumPy frames between processes without copying them.

The parent is a producer: it writes 4 MiB float32 frames (1024 x 1024) in
place with create_array(), each filled with its own number, and publishes each
one under the same key as it leaves the with block.  Two spawned consumer
processes take a read-only view of the key for every new frame (d.view(): no
copy, whatever the size), and check that every frame is whole (all elements
equal) and that the frame they viewed before is still unchanged although the
producer has replaced it since: a view pins its record, so that memory is not
reused while the view lives.

At the end each side times the zero-copy calls next to the copying ones on
the same frames: create_array + fill against fill + d[key] = frame in the
producer, d.view(key) against d[key] in the consumers.

    python examples/zero_copy_frames.py
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

SHAPE = (1024, 1024)
FRAME_BYTES = SHAPE[0] * SHAPE[1] * 4
FRAMES = 200
CONSUMERS = 2
TIMED = 30  # frames per timed loop at the end


def gbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.1f} GB/s" if seconds > 0 else "n/a"


def consumer(d: SharedDict, ready: Event, done: Event, results: Queue[Any]) -> None:
    ready.set()
    views = torn = changed = 0
    seen = set()
    prev: np.ndarray[Any, Any] | None = None
    prev_number = -1
    while True:
        finished = done.is_set()  # look once more after the producer is done
        version = d.version("frame")  # before the view: no change can slip by
        frame = d.view("frame")  # the record itself, read-only: nothing copied
        assert isinstance(frame, np.ndarray) and not frame.flags.writeable
        views += 1
        number = int(frame[0, 0])
        if frame.shape != SHAPE or frame.dtype != np.float32 or not (frame == number).all():
            torn += 1
        if prev is not None and not (prev == prev_number).all():
            changed += 1  # the previous frame, replaced meanwhile, must not change
        seen.add(number)
        prev, prev_number = frame, number  # keeps the last frame pinned
        if finished:
            break
        try:
            d.wait("frame", version, timeout=1.0)  # sleeps until the next frame
        except TimeoutError:
            pass
    del prev, frame  # the last views: their records can be reused

    # Time both ways of reading the (now unchanging) last frame.
    t0 = time.perf_counter()
    for _ in range(TIMED):
        v = d.view("frame")
        del v
    view_seconds = (time.perf_counter() - t0) / TIMED
    t0 = time.perf_counter()
    for _ in range(TIMED):
        c = d["frame"]
        del c
    get_seconds = (time.perf_counter() - t0) / TIMED
    results.put((views, len(seen), torn, changed, number, view_seconds, get_seconds))
    d.close()


def main() -> int:
    name = f"zero_copy_frames_{os.getpid()}"
    # Room for the current frame, the one being built and the two that each
    # consumer may still view (a replaced frame stays allocated while it is
    # viewed): 6 x 4 MiB, plus a margin.
    try:
        d = SharedDict(name, size=40 * 1024 * 1024, max_keys=16)
    except InsufficientSharedMemoryError as exc:
        print(f"not enough shared memory: {exc}")
        print("(in Docker, start the container with a larger --shm-size)")
        return 1
    print(f"created SharedDict {name!r} of {d.segment_size >> 20} MiB")
    try:
        ctx = mp.get_context("spawn")
        done = ctx.Event()
        results: Queue[Any] = ctx.Queue()
        with d.create_array("frame", SHAPE, np.float32) as arr:
            arr.fill(-1)  # a frame before the first one, for the consumers to find
        del arr
        procs = []
        for _ in range(CONSUMERS):
            ready = ctx.Event()
            proc = ctx.Process(target=consumer, args=(d, ready, done, results))
            proc.start()
            procs.append(proc)
            if not ready.wait(60):
                print("FAILED: a consumer process did not start")
                return 1

        for i in range(FRAMES):
            with d.create_array("frame", SHAPE, np.float32) as arr:
                arr.fill(i)  # written straight into shared memory
            # Published on leaving the block: consumers see all of it or none.
            assert not arr.flags.writeable
            time.sleep(0.001)  # a camera would wait for its next frame here
        del arr
        done.set()
        reports = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(60)
            if proc.exitcode != 0:
                print("FAILED: a consumer process exited with an error")
                return 1

        # The producer's two ways of writing a frame, on the same frames.
        t0 = time.perf_counter()
        for i in range(FRAMES, FRAMES + TIMED):
            with d.create_array("frame", SHAPE, np.float32) as arr:
                arr.fill(i)
        del arr
        in_place = time.perf_counter() - t0
        frame = np.empty(SHAPE, dtype=np.float32)
        t0 = time.perf_counter()
        for i in range(FRAMES, FRAMES + TIMED):
            frame.fill(i)
            d["frame"] = frame  # one more copy, into the segment
        copied = time.perf_counter() - t0

        print(f"producer: wrote {FRAMES} frames of {FRAME_BYTES >> 20} MiB "
              f"(float32, shape {SHAPE}) in place")
        ok = True
        for n, (views, distinct, torn, changed, last, view_s, get_s) in enumerate(reports):
            print(f"consumer {n}: {views} views, {distinct} different frames, {torn} torn, "
                  f"{changed} changed, last frame {last}")
            print(f"consumer {n}: view: {view_s * 1e6:.1f} us per frame, d[key]: "
                  f"{get_s * 1e6:.1f} us per frame ({gbps(FRAME_BYTES, get_s)}); "
                  f"view is {get_s / max(view_s, 1e-9):.0f}x faster")
            ok = ok and torn == 0 and changed == 0 and last == FRAMES - 1
        print(f"producer: create_array + fill: {gbps(TIMED * FRAME_BYTES, in_place)}, "
              f"fill + d[key] = frame: {gbps(TIMED * FRAME_BYTES, copied)}")
        back = d.view("frame")
        assert isinstance(back, np.ndarray)
        ok = ok and bool((back == FRAMES + TIMED - 1).all())
        del back
        print("every frame whole" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        d.close()
        d.unlink()
        print(f"closed and unlinked {name!r}")


if __name__ == "__main__":
    sys.exit(main())
