"""The systems under test, each behind the same small interface.

Every system is used the way its own documentation shows, and pays what a
user would pay: values are pickled where the system stores bytes, keys are
encoded where it wants bytes.  The timed loops are methods of the system, so
that the loop body is exactly the user's code (``d[k]`` for a mapping) and
carries no adapter call per operation.

A system object lives in one worker process.  ``create`` makes the store (the
owner process); ``attach`` opens the existing store from another process.
The in-process ``dict`` cannot be shared: its ``attach`` builds a private copy
of the same data, so it stands for the floor every shared system is measured
against.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from typing import Any

# Every system here is imported lazily: a missing competitor is skipped with a
# message, and the old `sharedbox` runs in its own venv, where ours is absent.


class Unavailable(Exception):
    """The system cannot run here (not installed, server missing...)."""


class System:
    key = ""               # id used on the command line and in results
    label = ""             # column title
    shared = True          # False only for the in-process dict floor
    slow_factor = 1        # timed loops use 1/slow_factor of the operations
    note = ""

    def version(self) -> str:
        return ""

    # -- lifecycle -----------------------------------------------------
    def create(self, name: str, spec: dict) -> None:
        raise NotImplementedError

    def attach(self, name: str, spec: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def destroy(self) -> None:
        self.close()

    def fill(self, keys: list, values: list) -> None:
        """Untimed bulk load; systems with a cheap bulk path override it."""
        self.set_loop(keys, values)

    # -- timed loops (mapping-like systems share these) -------------------
    def set_loop(self, keys, values) -> None:
        d = self.d
        for k, v in zip(keys, values):
            d[k] = v

    def get_loop(self, keys) -> Any:
        d = self.d
        v = None
        for k in keys:
            v = d[k]
        return v

    def contains_loop(self, keys) -> int:
        d = self.d
        n = 0
        for k in keys:
            if k in d:
                n += 1
        return n

    def delete_loop(self, keys) -> None:
        d = self.d
        for k in keys:
            del d[k]

    def mix_loop(self, ops) -> None:
        d = self.d
        for k, v in ops:
            if v is None:
                d[k]
            else:
                d[k] = v

    def read_many(self, keys) -> list:
        """Every value read (job "hotkey" checks each one)."""
        d = self.d
        return [d[k] for k in keys]

    # -- iteration (job "iterate"): every way a user walks the store --------
    def iter_loop(self) -> int:
        n = 0
        for _ in self.d:
            n += 1
        return n

    def keys_loop(self) -> int:
        n = 0
        for _ in self.d.keys():
            n += 1
        return n

    def items_loop(self) -> tuple:
        """(keys seen, sum of the values, last key, its value): the worker
        checks them off the clock; the sum is the one use of every value."""
        n = total = 0
        k = v = None
        for k, v in self.d.items():
            n += 1
            total += v
        return n, total, k, v

    def len_loop(self, calls: int) -> int:
        d = self.d
        n = 0
        for _ in range(calls):
            n = len(d)
        return n

    def set_array(self, key: str, arr) -> None:
        self.d[key] = arr

    def get_array(self, key: str, shape, dtype):
        return self.d[key]


# ---------------------------------------------------------------------------
class PlainDict(System):
    key, label, shared = "dict", "dict (in-process)", False

    def version(self) -> str:
        import sys

        return "Python " + sys.version.split()[0]

    def create(self, name, spec):
        self.d = {}

    def attach(self, name, spec):
        self.d = {}  # the worker loads the same data into this private copy


class SharedBox(System):
    key, label = "sharedbox", "sharedbox"

    def version(self):
        import importlib.metadata as md

        return md.version("sharedbox")

    def create(self, name, spec):
        from sharedbox import SharedDict

        self.name = name
        self.d = SharedDict(
            name, size=spec["segment_bytes"], max_keys=spec["max_keys"], create=True
        )

    def attach(self, name, spec):
        from sharedbox import SharedDict

        self.d = SharedDict(name, create=False)

    def close(self):
        self.d.close()

    def destroy(self):
        self.d.close()
        self.d.unlink()  # the spec's order: close, then unlink

    # -- one counter incremented from many processes (job "incr") --------
    # variant -> divisor of incr_n (slow variants time fewer increments)
    incr_variants = {"incr": 1, "lock": 5, "cas": 1}

    def incr_reset(self, key):
        self.d[key] = 0

    def incr_total(self, key):
        return self.d[key]

    def incr_incr_loop(self, key, n):
        incr = self.d.incr
        for _ in range(n):
            incr(key)

    def incr_lock_loop(self, key, n):
        d = self.d
        lock = d.lock("counter")
        for _ in range(n):
            with lock:
                d[key] += 1

    def incr_cas_loop(self, key, n):
        d = self.d
        cas = d.compare_and_set
        for _ in range(n):
            while True:
                v = d[key]
                if cas(key, v, v + 1):
                    break

    # -- zero-copy arrays (job "zerocopy", issue 11) -------------------------
    def set_array_loop(self, key, arr, n):
        d = self.d
        for _ in range(n):
            d[key] = arr

    def get_array_loop(self, key, n):
        d = self.d
        v = None
        for _ in range(n):
            v = d[key]
        return v

    def view_loop(self, key, n):
        """n views of one key, each released when the next one is bound (a
        view pins its record until released: that unpin is timed too)."""
        view = self.d.view
        v = None
        for _ in range(n):
            v = view(key)
        return v

    def create_fill(self, key, src, fill):
        """create_array + fill + publish (normal exit of the with block)."""
        with self.d.create_array(key, src.shape, src.dtype) as arr:
            fill(arr, src)
        return arr


class OldSharedBox(SharedBox):
    """The older public `sharedbox` (PyPI 0.2.4), run from its own venv."""

    key, label = "sharedbox-0.2.4", "sharedbox 0.2.4 (PyPI)"
    # Same constructor, close() and unlink() as ours: everything is inherited,
    # but `for k in d`: 0.2.4 has no __iter__ (Python falls back to d[0],
    # d[1], ..., which raises TypeError), only keys() and items()
    iter_loop = None



class Manager(System):
    """multiprocessing's SyncManager dict, reached over its socket."""

    key, label, slow_factor = "manager", "Manager().dict()", 10

    def version(self):
        import sys

        return "Python " + sys.version.split()[0]

    def create(self, name, spec):
        from multiprocessing.managers import DictProxy, SyncManager

        store: dict = {}

        class _Server(SyncManager):
            pass

        _Server.register("get_store", callable=lambda: store, proxytype=DictProxy)
        import threading
        from multiprocessing.managers import AcquirerProxy

        lock = threading.Lock()  # what Manager().Lock() serves (job "incr")
        _Server.register("get_lock", callable=lambda: lock, proxytype=AcquirerProxy)
        address = os.path.join(tempfile.gettempdir(), f"{name}.manager.sock")
        if os.path.exists(address):
            os.unlink(address)
        self.manager = _Server(address=address, authkey=name.encode())
        self.manager.start()
        self.d = self.manager.get_store()

    def attach(self, name, spec):
        from multiprocessing.managers import BaseManager, DictProxy

        class _Client(BaseManager):
            pass

        _Client.register("get_store", proxytype=DictProxy)
        # `for k in d` on a DictProxy gets an iterator proxy from the server
        # (one round trip per key), registered as SyncManager does
        from multiprocessing.managers import IteratorProxy

        _Client.register("Iterator", proxytype=IteratorProxy, create_method=False)
        from multiprocessing.managers import AcquirerProxy

        _Client.register("get_lock", proxytype=AcquirerProxy)
        address = os.path.join(tempfile.gettempdir(), f"{name}.manager.sock")
        self.manager = _Client(address=address, authkey=name.encode())
        self.manager.connect()
        self.d = self.manager.get_store()

    def close(self):
        self.d = None

    def destroy(self):
        self.d = None
        self.manager.shutdown()

    # -- job "incr": the lock lives in the manager's server, like Manager().Lock()
    incr_variants = {"lock": 200}

    def incr_reset(self, key):
        self.d[key] = 0

    def incr_total(self, key):
        return self.d[key]

    def incr_lock_loop(self, key, n):
        d, lock = self.d, self.manager.get_lock()
        for _ in range(n):
            with lock:
                d[key] += 1


class UltraDictSystem(System):
    key, label = "ultradict", "UltraDict"

    def version(self):
        import importlib.metadata as md

        return md.version("UltraDict")

    def create(self, name, spec):
        from UltraDict import UltraDict

        self.d = UltraDict(
            name=name,
            create=True,
            buffer_size=spec.get("ultradict_buffer", 4 << 20),
            full_dump_size=spec["segment_bytes"],
            shared_lock=True,
            auto_unlink=False,
        )

    def attach(self, name, spec):
        from UltraDict import UltraDict

        self.d = UltraDict(name=name, create=False, shared_lock=True, auto_unlink=False)

    def close(self):
        self.d.cleanup() if hasattr(self.d, "cleanup") else None

    def destroy(self):
        self.d.unlink()

    # -- job "incr": `with d.lock: d[k] += 1` (shared_lock=True, see create)
    incr_variants = {"lock": 20}

    def incr_reset(self, key):
        self.d[key] = 0

    def incr_total(self, key):
        return self.d[key]

    def incr_lock_loop(self, key, n):
        d = self.d
        for _ in range(n):
            with d.lock:
                d[key] += 1


class SharedMemoryDictSystem(System):
    """shared-memory-dict: one pickled dict, re-read on every operation."""

    key, label, slow_factor = "shm-dict", "shared-memory-dict", 1000

    def version(self):
        import importlib.metadata as md

        return md.version("shared-memory-dict")

    def create(self, name, spec):
        from shared_memory_dict import SharedMemoryDict

        self.d = SharedMemoryDict(name=name, size=self._size(spec))

    def attach(self, name, spec):
        from shared_memory_dict import SharedMemoryDict

        _quiet_resource_tracker()
        self.d = SharedMemoryDict(name=name, size=self._size(spec))

    @staticmethod
    def _size(spec):
        # Every operation copies the whole block, so it is sized for the data
        # (about 100 bytes per pickled entry), as its users are told to do.
        # (the small_kib job stores ~1 KiB values and says how much it needs)
        return spec.get("shm_dict_bytes") or max(1 << 20, 100 * max(3 * spec["n"],
                                                                   spec["iter_keys"]))

    def fill(self, keys, values):
        self.d.update(dict(zip(keys, values)))  # one pickling of the whole dict

    def destroy(self):
        self.d.shm.unlink() if hasattr(self.d, "shm") else self.d._memory_block.unlink()


class Lmdb(System):
    """py-lmdb on /dev/shm, writemap, no syncing: LMDB at its fastest."""

    key, label = "lmdb", "py-lmdb (txn per loop)"
    txn_per_op = False

    def version(self):
        import lmdb

        return lmdb.__version__

    def _open(self, name, spec):
        import lmdb

        self.path = os.path.join("/dev/shm", f"{name}.lmdb")
        os.makedirs(self.path, exist_ok=True)
        self.env = lmdb.open(
            self.path,
            map_size=spec["segment_bytes"],
            writemap=True,
            sync=False,
            metasync=False,
            max_readers=256,
        )

    create = attach = _open

    def close(self):
        self.env.close()

    def destroy(self):
        self.env.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def set_loop(self, keys, values):
        dumps, env = pickle.dumps, self.env
        if self.txn_per_op:
            for k, v in zip(keys, values):
                with env.begin(write=True) as txn:
                    txn.put(k.encode(), dumps(v))
        else:
            with env.begin(write=True) as txn:
                for k, v in zip(keys, values):
                    txn.put(k.encode(), dumps(v))

    def get_loop(self, keys):
        loads, env = pickle.loads, self.env
        v = None
        if self.txn_per_op:
            for k in keys:
                with env.begin() as txn:
                    v = loads(txn.get(k.encode()))
        else:
            with env.begin() as txn:
                for k in keys:
                    v = loads(txn.get(k.encode()))
        return v

    def read_many(self, keys):
        loads, env = pickle.loads, self.env
        if self.txn_per_op:
            out = []
            for k in keys:
                with env.begin() as txn:
                    out.append(loads(txn.get(k.encode())))
            return out
        with env.begin() as txn:
            return [loads(txn.get(k.encode())) for k in keys]

    def contains_loop(self, keys):
        n, env = 0, self.env
        if self.txn_per_op:
            for k in keys:
                with env.begin() as txn:
                    if txn.get(k.encode()) is not None:
                        n += 1
        else:
            with env.begin() as txn:
                for k in keys:
                    if txn.get(k.encode()) is not None:
                        n += 1
        return n

    def delete_loop(self, keys):
        env = self.env
        if self.txn_per_op:
            for k in keys:
                with env.begin(write=True) as txn:
                    txn.delete(k.encode())
        else:
            with env.begin(write=True) as txn:
                for k in keys:
                    txn.delete(k.encode())

    def mix_loop(self, ops):
        # Reads and writes interleave, so each operation has its own txn:
        # a long write txn would block every other writer.
        loads, dumps, env = pickle.loads, pickle.dumps, self.env
        for k, v in ops:
            if v is None:
                with env.begin() as txn:
                    loads(txn.get(k.encode()))
            else:
                with env.begin(write=True) as txn:
                    txn.put(k.encode(), dumps(v))

    # py-lmdb has no mapping: a user walks the keys with a cursor in one read
    # txn, decoding each key, so `for k in d` and keys() are the same loop
    def keys_loop(self):
        n = 0
        with self.env.begin() as txn:
            for k in txn.cursor().iternext(values=False):
                k.decode()
                n += 1
        return n

    iter_loop = keys_loop

    def items_loop(self):
        loads = pickle.loads
        n = total = 0
        k = v = None
        with self.env.begin() as txn:
            for k, v in txn.cursor().iternext(values=True):
                k, v = k.decode(), loads(v)
                n += 1
                total += v
        return n, total, k, v

    def len_loop(self, calls):
        # the exact count of the last committed txn, kept in the B-tree's root
        stat = self.env.stat
        n = 0
        for _ in range(calls):
            n = stat()["entries"]
        return n

    def set_array(self, key, arr):
        with self.env.begin(write=True) as txn:
            txn.put(key.encode(), pickle.dumps(arr, protocol=5))

    def get_array(self, key, shape, dtype):
        with self.env.begin() as txn:
            return pickle.loads(txn.get(key.encode()))


class LmdbPerOp(Lmdb):
    key, label, txn_per_op = "lmdb-op", "py-lmdb (txn per op)", True


class Redis(System):
    """redis-py against a local redis-server (no persistence), over TCP."""

    key, label, slow_factor = "redis", "Redis", 4

    def version(self):
        import redis

        return f"redis-py {redis.__version__}, server {os.environ.get('SBX_BENCH_REDIS_VERSION', '?')}"

    def _connect(self, name, spec):
        import redis

        port = os.environ.get("SBX_BENCH_REDIS_PORT")
        if not port:
            raise Unavailable("no redis-server running")
        self.r = redis.Redis(host="127.0.0.1", port=int(port))
        self.r.ping()
        self.prefix = name + ":"

    create = attach = _connect

    def destroy(self):
        self.r.flushdb()
        self.r.close()

    def close(self):
        self.r.close()

    def set_loop(self, keys, values):
        r, dumps = self.r, pickle.dumps
        for k, v in zip(keys, values):
            r.set(k, dumps(v))

    def get_loop(self, keys):
        r, loads = self.r, pickle.loads
        v = None
        for k in keys:
            v = loads(r.get(k))
        return v

    def read_many(self, keys):
        r, loads = self.r, pickle.loads
        return [loads(r.get(k)) for k in keys]

    def contains_loop(self, keys):
        r = self.r
        n = 0
        for k in keys:
            if r.exists(k):
                n += 1
        return n

    def delete_loop(self, keys):
        r = self.r
        for k in keys:
            r.delete(k)

    def mix_loop(self, ops):
        r, loads, dumps = self.r, pickle.loads, pickle.dumps
        for k, v in ops:
            if v is None:
                loads(r.get(k))
            else:
                r.set(k, dumps(v))

    # The store is the whole database (one key per entry, db 0, flushed by
    # destroy): SCAN walks its keys, a batch of 1000 per round trip, so
    # `for k in d` and keys() are the same loop; items() fetches each batch's
    # values with one MGET; DBSIZE is the exact count.
    def keys_loop(self):
        n = 0
        for k in self.r.scan_iter(count=1000):
            k.decode()
            n += 1
        return n

    iter_loop = keys_loop

    def items_loop(self):
        r, loads = self.r, pickle.loads
        n = total = 0
        k = v = None
        cursor = 0
        while True:
            cursor, keys = r.scan(cursor, count=1000)
            for k, v in zip(keys, r.mget(keys) if keys else []):
                k, v = k.decode(), loads(v)
                n += 1
                total += v
            if cursor == 0:  # the scan is complete
                return n, total, k, v

    def len_loop(self, calls):
        dbsize = self.r.dbsize
        n = 0
        for _ in range(calls):
            n = dbsize()
        return n

    def set_array(self, key, arr):
        self.r.set(key, pickle.dumps(arr, protocol=5))

    def get_array(self, key, shape, dtype):
        return pickle.loads(self.r.get(key))

    # -- job "incr": HINCRBY on a field of one hash, atomic in the server
    incr_variants = {"hincrby": 50}

    def incr_reset(self, key):
        self.r.hset(self.prefix + "counters", key, 0)

    def incr_total(self, key):
        return int(self.r.hget(self.prefix + "counters", key))

    def incr_hincrby_loop(self, key, n):
        r, h = self.r, self.prefix + "counters"
        for _ in range(n):
            r.hincrby(h, key, 1)


class RedisDictSystem(System):
    """sharedbox.RedisDict, and beside it on the same server the hand-written
    redis-py code it replaces: ``r.hset(h, k, pickle.dumps(v))`` and
    ``pickle.loads(r.hget(h, k))`` on a plain hash.  The worker alternates the
    two in one process, so that both see the same load of the machine.  A
    second dict of bulk_keys keys times update()/items() against per-key loops."""

    key, label, slow_factor = "redisdict", "sharedbox RedisDict", 4

    def version(self):
        import importlib.metadata as md

        import redis

        return f"sharedbox {md.version('sharedbox')}, redis-py {redis.__version__}"

    def _open(self, name, spec, create):
        from sharedbox import RedisDict

        port = os.environ.get("SBX_BENCH_REDIS_PORT")
        if not port:
            raise Unavailable("no redis-server running")
        url = f"redis://127.0.0.1:{port}/0"
        self.d = RedisDict(name, url=url, create=create, max_keys=spec["max_keys"])
        self.bulk = RedisDict(name + "_bulk", url=url, create=create,
                              max_keys=2 * spec["bulk_keys"])

        import redis

        self.r = redis.Redis(host="127.0.0.1", port=int(port))
        self.h = f"{name}:by-hand"

    def create(self, name, spec):
        self._open(name, spec, True)

    def attach(self, name, spec):
        self._open(name, spec, False)

    def close(self):
        self.d.close()
        self.bulk.close()

    def destroy(self):
        for d in (self.d, self.bulk):
            d.close()
            d.unlink()
        self.r.delete(self.h)
        self.r.close()

    # the hand-written redis-py baseline
    def hand_fill(self, keys, values):
        pipe = self.r.pipeline(transaction=False)
        for i in range(0, len(keys), 1000):
            pipe.hset(self.h, mapping={k: pickle.dumps(v) for k, v in
                                       zip(keys[i:i + 1000], values[i:i + 1000])})
        pipe.execute()

    def hand_set_loop(self, keys, values):
        r, h, dumps = self.r, self.h, pickle.dumps
        for k, v in zip(keys, values):
            r.hset(h, k, dumps(v))

    def hand_get_loop(self, keys):
        r, h, loads = self.r, self.h, pickle.loads
        v = None
        for k in keys:
            v = loads(r.hget(h, k))
        return v

    def fill(self, keys, values):
        self.d.update(dict(zip(keys, values)))

    # bulk operations on the second dict
    def bulk_update(self, keys, values):
        self.bulk.update(dict(zip(keys, values)))

    def bulk_set_loop(self, keys, values):
        b = self.bulk
        for k, v in zip(keys, values):
            b[k] = v

    def bulk_items(self):
        return len(list(self.bulk.items()))

    def bulk_get_loop(self, keys):
        b = self.bulk
        return len([(k, b[k]) for k in keys])


class ShmArrays(System):
    """Hand-made multiprocessing.shared_memory: one block per array."""

    key, label = "shm", "multiprocessing.shared_memory"

    def version(self):
        import sys

        return "Python " + sys.version.split()[0]

    def create(self, name, spec):
        self.name, self.blocks, self.owner = name, {}, True

    def attach(self, name, spec):
        _quiet_resource_tracker()
        self.name, self.blocks, self.owner = name, {}, False

    def _block(self, key, nbytes):
        from multiprocessing import shared_memory

        block = self.blocks.get(key)
        if block is None:
            block_name = f"{self.name}_{key}"
            if self.owner:
                block = shared_memory.SharedMemory(block_name, create=True, size=nbytes)
            else:
                block = shared_memory.SharedMemory(block_name)
            self.blocks[key] = block
        return block

    def set_array(self, key, arr):
        import numpy as np

        block = self._block(key, arr.nbytes)
        np.ndarray(arr.shape, arr.dtype, buffer=block.buf)[...] = arr

    def get_array(self, key, shape, dtype):
        import numpy as np

        block = self._block(key, 0)
        return np.ndarray(shape, dtype, buffer=block.buf).copy()

    def open_block(self, key):
        """Attach (reader) to one array's block ahead of timing its views."""
        self._block(key, 0)

    def view_loop(self, key, shape, dtype, n):
        """The hand-made zero-copy read (job "zerocopy"): an ndarray over the
        already attached block, looked up by key as a user keeps them; each
        array released when the next one is bound, as in SharedBox.view_loop."""
        import numpy as np

        blocks, ndarray = self.blocks, np.ndarray
        v = None
        for _ in range(n):
            v = ndarray(shape, dtype, buffer=blocks[key].buf)
        return v

    def close(self):
        for block in self.blocks.values():
            block.close()

    def destroy(self):
        for block in self.blocks.values():
            block.close()
            block.unlink()


def _quiet_resource_tracker() -> None:
    """Python < 3.13 registers *attached* shared memory with the resource
    tracker, which unlinks it when the attaching process exits; a reader must
    never do that, so registration is turned off in reader processes."""
    from multiprocessing import resource_tracker

    resource_tracker.register = lambda *a, **k: None  # type: ignore[assignment]


SYSTEMS = {
    cls.key: cls
    for cls in (
        PlainDict,
        SharedBox,
        OldSharedBox,
        Lmdb,
        LmdbPerOp,
        Redis,
        RedisDictSystem,
        Manager,
        UltraDictSystem,
        SharedMemoryDictSystem,
        ShmArrays,
    )
}


def make(key: str) -> System:
    return SYSTEMS[key]()


def labels() -> dict:
    return {k: cls.label for k, cls in SYSTEMS.items()}


def slow_factor(key: str) -> int:
    return SYSTEMS[key].slow_factor
