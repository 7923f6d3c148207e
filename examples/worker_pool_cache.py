"""A multiprocessing.Pool whose workers share one cache.

Each request needs the result of a slow lookup (here 50 ms of sleep standing
in for a database query or a remote call).  Without sharing, every worker
process would fill its own cache and repeat the others' lookups; with a
SharedDict, a result computed by any worker is a cache hit for all of them.

The cache is handed to the pool as an initializer argument: it pickles as its
segment name and each worker attaches once, when it starts.  (Passing it in
every task's arguments also works; each task then attaches again, which costs
about a hundred microseconds.)

    python examples/worker_pool_cache.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from typing import Any, Optional

from sharedbox import SharedDict

WORKERS = 4
REQUESTS = 200
DISTINCT = 10
LOOKUP_SECONDS = 0.05

_cache: Optional[SharedDict] = None  # this worker's handle, set by init_worker


def init_worker(cache: SharedDict) -> None:
    global _cache
    _cache = cache


def record_for(city: str) -> dict[str, Any]:
    """The answer for a city (deterministic, so the parent can check it)."""
    code = sum(map(ord, city))
    return {"city": city, "population": code * 1000, "zone": code % 24}


def slow_lookup(city: str) -> dict[str, Any]:
    time.sleep(LOOKUP_SECONDS)
    return record_for(city)


def handle(city: str) -> tuple[str, dict[str, Any], bool]:
    """Serve one request: (city, record, whether this call did the lookup)."""
    assert _cache is not None
    key = f"city/{city}"
    record = _cache.get(key)
    if record is not None:
        return city, record, False
    record = slow_lookup(city)
    # Two workers may miss at the same time; setdefault stores the first
    # record and returns it to both, so every worker agrees on one value.
    stored: dict[str, Any] = _cache.setdefault(key, record)
    return city, stored, True


def main() -> int:
    name = f"pool_cache_{os.getpid()}"
    cities = [f"city{i % DISTINCT:02d}" for i in range(REQUESTS)]
    cache = SharedDict(name, size=4 * 1024 * 1024, max_keys=1000)
    try:
        ctx = mp.get_context("spawn")
        t0 = time.perf_counter()
        with ctx.Pool(WORKERS, initializer=init_worker, initargs=(cache,)) as pool:
            answers = pool.map(handle, cities, chunksize=4)
        elapsed = time.perf_counter() - t0

        lookups = sum(did_lookup for _, _, did_lookup in answers)
        wrong = [city for city, record, _ in answers if record != record_for(city)]
        print(f"{REQUESTS} requests for {DISTINCT} distinct cities on {WORKERS} workers")
        print(f"slow lookups: {lookups}, cache hits: {REQUESTS - lookups}")
        print(f"cache now holds {len(cache)} records; wrong answers: {len(wrong)}")
        serial = REQUESTS * LOOKUP_SECONDS / WORKERS
        print(f"took {elapsed:.2f} s (about {serial:.1f} s with no cache)")
        # Each city is looked up at least once, and at most once per worker
        # (only workers that missed at the same moment repeat a lookup).
        ok = not wrong and len(cache) == DISTINCT and DISTINCT <= lookups <= DISTINCT * WORKERS
        print("ok" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        cache.close()
        cache.unlink()  # the creator removes the segment
        print(f"closed and unlinked {name!r}")

if __name__ == "__main__":
    sys.exit(main())
