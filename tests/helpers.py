"""Module-level functions for child processes (spawn needs importable targets)."""

import os
import time

from sharedbox import SharedDict


def writer_disjoint(name, worker, count, barrier, results):
    d = SharedDict(name, create=False)
    barrier.wait()
    for i in range(count):
        d[f"w{worker}_{i}"] = (worker, i, "x" * (i % 50))
    d.close()
    results.put(("done", worker))


def overwriter(name, worker, rounds, barrier):
    d = SharedDict(name, create=False)
    barrier.wait()
    for i in range(rounds):
        # Every value is self-consistent: a block of one repeated byte plus
        # a header that names it.  A torn read would mix two writers' bytes.
        size = 1000 + (i * 7919 + worker * 104729) % 60000
        fill = (worker * 31 + i) % 251
        d["hot"] = (worker, i, bytes([fill]) * size)
    d.close()


def reader_checker(name, duration, barrier, results):
    d = SharedDict(name, create=False)
    barrier.wait()
    deadline = time.monotonic() + duration
    reads = torn = 0
    while time.monotonic() < deadline:
        worker, i, block = d["hot"]
        reads += 1
        size = 1000 + (i * 7919 + worker * 104729) % 60000
        fill = (worker * 31 + i) % 251
        if len(block) != size or block.count(bytes([fill])) != size:
            torn += 1
    d.close()
    results.put((reads, torn))


def consumer(name, results):
    import numpy as np  # noqa: F401  (the value holds an ndarray)

    d = SharedDict(name, create=False)
    results.put((d["timestamp"], d["readings"].sum(), d["metadata"]))
    d.close()


def counter_worker(name, worker, count, barrier):
    d = SharedDict(name, create=False)
    barrier.wait()
    for i in range(count):
        d[f"k{worker}"] = i
        assert d[f"k{worker}"] == i
    d.close()


def big_writer_forever(name, ready):
    """Overwrites one key with large values until killed (SIGKILL lands mid-copy)."""
    d = SharedDict(name, create=False)
    payload = [bytes([i]) * (4 << 20) for i in range(4)]
    ready.set()
    i = 0
    while True:
        d["big"] = payload[i % 4]
        d[f"small{i % 100}"] = i
        i += 1


def attach_and_report(name, results):
    try:
        d = SharedDict(name, create=False)
        results.put(("ok", dict(d.items())))
        d.close()
    except Exception as exc:  # reported to the parent
        results.put(("error", type(exc).__name__, str(exc)))


def pid():
    return os.getpid()


def sliding_window(name, count, window, barrier):
    """Inserts k0, k1, ... in order, deleting from the front to keep `window` keys."""
    d = SharedDict(name, create=False)
    barrier.wait()
    for i in range(count):
        d[f"k{i}"] = i
        if i >= window:
            del d[f"k{i - window}"]
    d.close()


def pool_square(d, i):
    """A Pool task that receives the SharedDict itself as an argument."""
    d[f"sq{i}"] = i * i
    return os.getpid(), d.name, d.created


def write_and_exit(d, key):
    """Writes one key and exits without closing (the handle dies with the process)."""
    d[key] = os.getpid()


def cache_writer(name, rounds, requests, replies):
    """For test_value_cache: on each request, write round r's value for the
    key, then reply (the write has completed when the reply arrives)."""
    from sharedbox import SharedDict

    d = SharedDict(name, create=False)
    for r in range(rounds):
        kind = requests.get(timeout=60)
        if kind == "dict":
            d["k"] = {"round": r, "name": "same-size"}
        elif kind == "tuple":
            d["k"] = (r, "same-size")
        elif kind == "str":  # long enough to be cached (value_cache.hpp)
            d["k"] = f"{r:06d}" + "s" * 1000
        elif kind == "int":  # small scalars are cached from their second read
            d["k"] = 10**12 + r
        elif kind == "short":
            d["k"] = f"short-{r:06d}"
        elif kind == "float":
            d["k"] = r + 0.5
        elif kind == "delete":
            del d["k"]
        replies.put(r)
    d.close()


def items_writer(name, rounds, requests, replies):
    """For test_items_cache: on each request, apply one change to the dict,
    then reply (the change has completed when the reply arrives)."""
    from sharedbox import SharedDict

    d = SharedDict(name, create=False)
    for r in range(rounds):
        kind = requests.get(timeout=60)
        if kind == "overwrite":  # same size and type as before: only the value differs
            d[f"k{r % 50:03d}"] = r % 10
        elif kind == "insert":
            d[f"new{r:05d}"] = r
        elif kind == "delete":
            d.pop(f"new{r - 1:05d}")
        elif kind == "container":
            d["box"] = {"round": r % 10, "tags": ("a", "b")}
        replies.put(r)
    d.close()
