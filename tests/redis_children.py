"""Child-process bodies for tests/test_redis.py (spawn needs importable targets)."""

import os
import time

from sharedbox import RedisDict


def write_through_handle(d, key):
    """Receives a pickled RedisDict and writes through it."""
    d[key] = ("from child", os.getpid(), d.name)
    d.close()


def incr_worker(url, name, count, barrier):
    d = RedisDict(name, url=url, create=False)
    barrier.wait()
    for _ in range(count):
        d.incr("counter")
    d.close()


def locked_increments(url, name, count, barrier):
    """Read-modify-write under the lock: without mutual exclusion, updates are lost."""
    d = RedisDict(name, url=url, create=False)
    barrier.wait()
    for _ in range(count):
        with d.lock("rmw"):
            d["plain"] = d["plain"] + 1
    d.close()


def hold_lock_forever(url, name, lease, ready):
    d = RedisDict(name, url=url, create=False)
    lock = d.lock("crash", lease=lease)
    lock.acquire()
    ready.set()
    while True:  # killed by the parent while holding the lock
        time.sleep(1)


def write_after(url, name, key, value, started):
    d = RedisDict(name, url=url, create=False)
    started.wait(30)
    time.sleep(0.2)  # let the parent reach wait(); the test passes either way
    d[key] = value
    d.close()
