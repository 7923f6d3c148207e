"""Producer/consumer of sensor readings through one SharedDict.

The API specification's multi-process example, made into a small pipeline:
one producer process publishes batches of sensor readings (a timestamp, a
NumPy array of 1,000 readings and a metadata dict, as in the spec) and two
consumer processes read every batch as soon as it appears.  Consumers do not
poll: they sleep in d.wait() on the "produced" counter, which wakes them when
the producer moves it (a futex in the segment, no CPU while waiting).  The parent owns
the segment: it creates it, hands it to the children as a Process argument
(a SharedDict pickles as its name and re-attaches in the child), checks that
every consumer saw exactly what the producer wrote, then unlinks it.

    python examples/sensor_pipeline.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from multiprocessing.queues import Queue
from typing import Any

import numpy as np

from sharedbox import SharedDict

BATCHES = 200
READINGS_PER_BATCH = 1000
CONSUMERS = 2


def produce(d: SharedDict, batches: int) -> None:
    """Publish `batches` batches, then the grand total for the checkers."""
    rng = np.random.default_rng(2024)
    d["metadata"] = {"sensor_id": "temp_01", "location": "room_a"}
    total = 0.0
    for i in range(batches):
        readings = rng.random(READINGS_PER_BATCH)
        total += float(readings.sum())
        # One key per batch: a consumer that falls behind still finds it.
        d[f"batch/{i}"] = {"timestamp": time.time(), "readings": readings}
        d["timestamp"] = time.time()  # the latest batch's time, as in the spec
        d["produced"] = i + 1
    d["producer_total"] = total
    d.close()


def consume(d: SharedDict, worker: int, batches: int, results: Queue[Any]) -> None:
    """Read batches 0, 1, ... as they appear; report how many and their sum."""
    total = 0.0
    lags = []
    for i in range(batches):
        # The version first, then the read: a batch produced in between
        # changes the version, so wait() returns at once instead of missing it.
        seen = d.version("produced")
        while d.get("produced", 0) <= i:
            seen = d.wait("produced", seen, timeout=60)  # sleeps until the producer moves it
        batch = d[f"batch/{i}"]
        lags.append(time.time() - batch["timestamp"])
        total += float(batch["readings"].sum())
    metadata = d["metadata"]  # written before the first batch
    results.put((worker, metadata["sensor_id"], batches, total, max(lags)))
    d.close()


def main() -> int:
    name = f"sensor_data_{os.getpid()}"
    ctx = mp.get_context("spawn")
    # 200 batches of 1,000 float64 readings need about 1.7 MB; 16 MiB leaves room.
    d = SharedDict(name, size=16 * 1024 * 1024, max_keys=BATCHES + 10)
    print(f"created SharedDict {name!r}: {d.segment_size >> 20} MiB, max_keys={d.max_keys}")
    try:
        results: Queue[Any] = ctx.Queue()
        procs = [ctx.Process(target=produce, args=(d, BATCHES))]
        procs += [
            ctx.Process(target=consume, args=(d, w, BATCHES, results)) for w in range(CONSUMERS)
        ]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        reports = sorted(results.get(timeout=60) for _ in range(CONSUMERS))
        for p in procs:
            p.join(60)
        elapsed = time.perf_counter() - t0
        if any(p.exitcode != 0 for p in procs):
            print("FAILED: a child process exited with an error")
            return 1

        expected = d["producer_total"]
        print(
            f"producer: {d['produced']} batches of {READINGS_PER_BATCH} readings, "
            f"sum {expected:.6f}"
        )
        ok = True
        for worker, sensor, count, total, lag in reports:
            match = total == expected
            ok = ok and match and count == BATCHES
            print(
                f"consumer {worker}: read {count} batches from sensor {sensor}, "
                f"sum {total:.6f} ({'matches' if match else 'MISMATCH'}), "
                f"worst lag {lag * 1000:.1f} ms"
            )
        print(f"latest timestamp {d['timestamp']:.3f}; {len(d)} keys; {elapsed:.2f} s in all")
        print("all consumers saw every reading" if ok else "FAILED: totals differ")
        return 0 if ok else 1
    finally:
        d.close()
        d.unlink()  # the creator removes the segment once everyone is done
        print(f"closed and unlinked {name!r}")


if __name__ == "__main__":
    sys.exit(main())
