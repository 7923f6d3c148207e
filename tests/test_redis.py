"""RedisDict beyond the shared conformance suite (test_mapping, test_values and
test_numpy run on every backend): the Redis layout, identical value bytes and
`sharedbox copy`, errors and faults of a real server, batching, pickling as a
handle, the coordination API, Redis Cluster and shards.

Every test talks to a real redis-server started by conftest.py (or by the test
itself, when it kills or stops the server)."""

import asyncio
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
import redis

import sharedbox
from conftest import drop_redis_dict, remove_segment, unique_name
from redis_servers import Server, free_port
from sharedbox import (
    MISSING,
    BackendUnavailableError,
    IncompatibleSegmentError,
    PickleRefusedError,
    RedisDict,
    SegmentNotFoundError,
    SegmentReplacedError,
    SharedDict,
    SharedDictClosedError,
    SharedDictOpenError,
    TooManyKeysError,
    _core,
)

import redis_children


@pytest.fixture
def url(redis_server):
    return redis_server.url


@pytest.fixture
def rd(url):
    d = RedisDict(unique_name(), url=url, max_keys=1000)
    yield d
    drop_redis_dict(d)


@pytest.fixture
def client(redis_server):
    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    yield r
    r.close()


def commands_processed(r):
    return r.info("stats")["total_commands_processed"]


# -- the same API ---------------------------------------------------------------


def test_public_api_matches_shareddict():
    # Properties of a POSIX segment: its size, lock stripes, creator and
    # permission bits (Redis controls access with AUTH/ACLs and TLS URLs).
    shm_only = {"segment_size", "stripes", "creator_pid", "mode"}
    # Zero-copy reads and in-place writes need the value in this machine's
    # memory; a Redis value is always copied over the socket.
    shm_only |= {"view", "create_array", "create_bytes"}
    coordination = {"incr", "compare_and_set", "lock", "version", "wait", "wait_async"}
    shared = {n for n in dir(SharedDict) if not n.startswith("_")} - shm_only
    missing = (shared | coordination) - set(dir(RedisDict))
    assert not missing
    assert sharedbox.RedisDict is RedisDict and "MISSING" in sharedbox.__all__


def test_missing_is_one_object_everywhere():
    assert repr(MISSING) == "sharedbox.MISSING" and not MISSING
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING
    assert type(MISSING)() is MISSING


# -- layout and encoding -------------------------------------------------------------


def test_one_dict_is_one_hash_with_documented_keys(rd, client):
    rd["a"] = 1
    rd["b"] = np.arange(3, dtype="i2")
    n = rd.name
    keys = {k.decode() for k in client.keys(f"sharedbox:{{{n}}}*")}
    assert keys == {f"sharedbox:{{{n}}}", f"sharedbox:{{{n}}}:meta", f"sharedbox:{{{n}}}:ver",
                    f"sharedbox:{{{n}}}:seq"}
    assert client.type(f"sharedbox:{{{n}}}") == b"hash"
    meta = client.hgetall(f"sharedbox:{{{n}}}:meta")
    identity = meta.pop(b"id")  # random, written once: tells this dict from a later namesake
    assert len(identity) == 32 and int(identity, 16) >= 0
    assert meta == {b"format": b"sharedbox-dict", b"version": b"1", b"max_keys": b"1000",
                    b"shards": b"1"}
    stored = client.hgetall(f"sharedbox:{{{n}}}")
    assert stored == {b"a": _core.encode_value(1),
                      b"b": _core.encode_value(np.arange(3, dtype="i2"))}


VALUES = [None, True, False, 0, -(2**63), 2**63, 1.5, float("-inf"), "", "ünï 🎉", b"\0\xff",
          [1, {2}], {"a": (1,)}, np.arange(10, dtype=">f4"), np.zeros((3, 5), order="F"),
          np.array(["x", "yz"]), np.array([1, None], dtype=object), np.float32(2.5),
          b"z" * 3_000_000]


def test_both_backends_store_identical_bytes(rd, name):
    sd = SharedDict(name, size=16 << 20)
    try:
        for i, value in enumerate(VALUES):
            key = f"k{i}" + "x" * i  # keys of varying length move arrays in the segment
            sd[key] = value
            rd[key] = value
            canonical = _core.encode_value(value)
            assert sd._get_raw(key) == canonical
            assert rd._get_raw(key) == canonical
    finally:
        sd.close()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sharedbox", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_copy_round_trips_byte_for_byte_both_ways(url):
    first, back = unique_name(), unique_name()
    remote, remote2 = unique_name(), unique_name()
    sd = SharedDict(first, size=16 << 20)
    try:
        for i, value in enumerate(VALUES):
            sd[f"k{i}"] = value
        want = {k: sd._get_raw(k) for k in sd}
        out = run_cli("copy", f"shm:{first}", f"{url}#{remote}")
        assert out.returncode == 0, out.stderr
        assert f"copied {len(VALUES)} key(s)" in out.stdout
        r = RedisDict(remote, url=url, create=False)
        assert {k: r._get_raw(k) for k in r} == want
        out = run_cli("copy", f"{url}#{remote}", f"shm:{back}")
        assert out.returncode == 0, out.stderr
        sd2 = SharedDict(back, create=False)
        assert {k: sd2._get_raw(k) for k in sd2} == want
        assert np.array_equal(sd2["k13"], VALUES[13]) and sd2["k11"] == [1, {2}]
        sd2.close()
        # And Redis -> shm -> Redis ends with the same bytes in Redis.
        out = run_cli("copy", f"shm:{back}", f"{url}#{remote2}")
        assert out.returncode == 0, out.stderr
        r2 = RedisDict(remote2, url=url, create=False)
        assert {k: r2._get_raw(k) for k in r2} == want
        drop_redis_dict(r)
        drop_redis_dict(r2)
    finally:
        sd.close()
        remove_segment(first)
        remove_segment(back)


def test_cli_copy_errors_are_one_line(url):
    out = run_cli("copy", f"{url}#{unique_name()}", "shm:x")
    assert out.returncode == 1 and out.stderr.startswith("sharedbox copy: no dict at redis://")
    out = run_cli("copy", "shm:x", "redis://127.0.0.1:1/0")
    assert out.returncode == 1 and "fragment" in out.stderr
    out = run_cli("copy", "nowhere", "shm:x")
    assert out.returncode == 1 and "not a location" in out.stderr


def test_raw_put_refuses_malformed_bytes(rd):
    with pytest.raises(ValueError, match="unknown tag"):
        rd._put_raw("k", b"\x63")
    with pytest.raises(ValueError, match="8 bytes"):
        rd._put_raw("k", b"\x03\x01")
    assert "k" not in rd


# -- errors ----------------------------------------------------------------------------


def test_create_false_on_a_missing_dict(url):
    with pytest.raises(SegmentNotFoundError) as info:
        RedisDict(unique_name(), url=url, create=False)
    assert isinstance(info.value, FileNotFoundError)


def test_attach_uses_the_creators_parameters(rd, url):
    other = RedisDict(rd.name, url=url, max_keys=5)
    assert other.max_keys == 1000 and not other.created and rd.created
    other.close()


def test_too_many_keys_leaves_the_dict_unchanged(url):
    d = RedisDict(unique_name(), url=url, max_keys=3)
    try:
        d.update(a=1, b=2, c=3)
        with pytest.raises(TooManyKeysError, match="max_keys=3"):
            d["d"] = 4
        d["a"] = 10  # overwriting is always allowed
        with pytest.raises(TooManyKeysError):
            d.update({"a": 11, "e": 5})  # all or nothing
        with pytest.raises(TooManyKeysError):
            d.compare_and_set("f", MISSING, 1)
        assert dict(d.items()) == {"a": 10, "b": 2, "c": 3}
        del d["b"]
        d["d"] = 4
        assert len(d) == 3
    finally:
        drop_redis_dict(d)


def test_a_bad_value_in_update_stores_nothing(rd):
    import threading as t

    with pytest.raises(ValueError, match="cannot be pickled"):
        rd.update({"a": 1, "lock": t.Lock()})
    assert len(rd) == 0


def test_allow_pickle_false_refuses_pickles_both_ways(rd, url):
    rd["p"] = {1, 2}  # a set: pickled (lists and dicts have a native encoding)
    rd["n"] = "native"
    strict = RedisDict(rd.name, url=url, create=False, allow_pickle=False)
    try:
        with pytest.raises(PickleRefusedError):
            strict["p"]
        with pytest.raises(PickleRefusedError):
            strict["q"] = {"a"}
        with pytest.raises(PickleRefusedError):
            strict._put_raw("q", _core.encode_value({"a"}))
        assert strict["n"] == "native" and "q" not in strict
        strict["a"] = np.arange(3)
        assert np.array_equal(strict["a"], np.arange(3))
    finally:
        strict.close()


@pytest.mark.parametrize("make_foreign", [
    lambda r, n: r.set(f"sharedbox:{{{n}}}", "someone else's"),
    lambda r, n: r.hset(f"sharedbox:{{{n}}}", "f", "v"),
    lambda r, n: r.set(f"sharedbox:{{{n}}}:meta", "x"),
    lambda r, n: r.hset(f"sharedbox:{{{n}}}:meta", mapping={"format": "other", "version": 1,
                                                              "max_keys": 1, "shards": 1}),
    lambda r, n: (r.hset(f"sharedbox:{{{n}}}:meta", mapping={
        "format": "sharedbox-dict", "version": 1, "max_keys": 9, "shards": 1}),
        r.lpush(f"sharedbox:{{{n}}}:ver", "x")),
], ids=["string-at-hash", "hash-without-meta", "meta-not-a-hash", "meta-of-another-format",
        "ver-not-a-hash"])
def test_keys_that_are_not_a_sharedbox_dict_are_refused(client, url, make_foreign):
    n = unique_name()
    make_foreign(client, n)
    try:
        with pytest.raises(IncompatibleSegmentError, match="not"):
            RedisDict(n, url=url)
        with pytest.raises(IncompatibleSegmentError):
            RedisDict(n, url=url, create=False)
    finally:
        for k in client.keys(f"sharedbox:{{{n}}}*"):
            client.delete(k)


def test_wrong_type_under_an_open_dict_is_refused(rd, client):
    client.delete(f"sharedbox:{{{rd.name}}}")
    client.set(f"sharedbox:{{{rd.name}}}", "clobbered")
    with pytest.raises(IncompatibleSegmentError):
        rd["k"]


def test_unreachable_server_names_the_url_without_password():
    port = free_port()
    with pytest.raises(BackendUnavailableError) as info:
        RedisDict("x", url=f"redis://alice:hunter2@127.0.0.1:{port}/0", socket_connect_timeout=2)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert "hunter2" not in message and f"redis://alice:***@127.0.0.1:{port}/0" in message


@pytest.mark.parametrize("bad", ["", "a{b", "a}b", "a#b", "nul\0"])
def test_bad_names(url, bad):
    with pytest.raises(ValueError):
        RedisDict(bad, url=url)


def test_closed_handle(rd):
    rd["a"] = 1
    rd.close()
    assert rd.is_closed() and "closed" in repr(rd)
    for op in (lambda: rd["a"], lambda: rd.__setitem__("a", 2), lambda: len(rd),
               lambda: list(rd), lambda: rd.incr("n"), lambda: pickle.dumps(rd)):
        with pytest.raises(SharedDictClosedError):
            op()
    rd.close()  # twice is fine


def test_unlink(url, client):
    d = RedisDict(unique_name(), {"a": 1}, url=url)
    other = RedisDict(d.name, url=url, create=False)
    with d.lock("l"):
        pass
    with pytest.raises(RuntimeError, match="close"):
        d.unlink()
    d.close()
    d.unlink()
    assert client.keys(f"sharedbox:{{{d.name}}}*") == []
    # Unlike a segment, which open handles keep alive, the dict is gone for
    # everyone: other handles read it as empty and their writes are refused.
    assert "a" not in other
    with pytest.raises(SegmentNotFoundError, match="no longer exists"):
        other["b"] = 2
    other.close()
    with pytest.raises(SegmentNotFoundError):
        d.unlink()


# -- faults of a real server -------------------------------------------------------------


def test_server_killed_mid_run_then_back(tmp_path):
    server = Server(directory=str(tmp_path))
    try:
        d = RedisDict("survivor", url=server.url, socket_timeout=5, socket_connect_timeout=2)
        d.update({f"k{i}": i for i in range(100)})
        redis.Redis(port=server.port).save()  # explicit snapshot; no automatic persistence
        server.kill()
        for op in (lambda: d["k1"], lambda: d.__setitem__("k1", -1), lambda: len(d),
                   lambda: list(d.items()), lambda: d.incr("n"), lambda: d.version("k1"),
                   lambda: d.wait("k1", timeout=1), lambda: d.lock().acquire(timeout=1)):
            with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{server.port}"):
                op()
        server.start()  # same port and directory: it loads the snapshot
        assert d["k1"] == 1 and len(d) == 100  # the same handle reconnects
        d["k1"] = "after"
        assert d.incr("n") == 1 and d["k1"] == "after"
        d.close()
    finally:
        server.remove()


def test_network_timeout_is_bounded_by_socket_timeout(tmp_path):
    server = Server(directory=str(tmp_path))
    try:
        d = RedisDict("slow", url=server.url, socket_timeout=0.5)
        d["a"] = 1
        server.proc.send_signal(signal.SIGSTOP)  # the server stops answering
        try:
            with pytest.raises(BackendUnavailableError, match="timed out"):
                d["a"]
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert d["a"] == 1
        d.close()
    finally:
        server.remove()


# -- batching ---------------------------------------------------------------------------------


def test_bulk_operations_take_a_round_trip_per_batch_not_per_key(url, monkeypatch):
    # Each request the client sends is one send_packed_command (a pipeline
    # sends all its commands at once): count them.
    sent = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(1)
        return original(self, command, check_health)

    rd = RedisDict(unique_name(), url=url, max_keys=5000)
    data = {f"key{i:05d}": i for i in range(3000)}
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    rd.update(data)
    assert len(sent) <= 3 + 2  # 3 batches of 1000; perhaps NOSCRIPT, then SCRIPT LOAD
    for view in (rd.items, rd.values, rd.keys):
        sent.clear()
        assert len(list(view())) == 3000
        assert len(sent) <= 8  # HSCAN pages of about 1000
    sent.clear()
    for i in range(10):  # the per-key loop it replaces: a round trip each
        rd[f"key{i:05d}"] = -i
    assert len(sent) == 10
    monkeypatch.undo()
    assert dict(rd.items()) == {**data, **{f"key{i:05d}": -i for i in range(10)}}
    drop_redis_dict(rd)


# -- processes ----------------------------------------------------------------------------------


def test_travels_to_a_spawned_child_as_url_and_name(rd):
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=redis_children.write_through_handle, args=(rd, "child"))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert rd["child"][0] == "from child" and rd["child"][2] == rd.name
    _, (url, name, allow_pickle, _) = rd.__reduce__()
    assert name == rd.name and allow_pickle is True and url.startswith("redis://")


# -- coordination --------------------------------------------------------------------------------


def test_incr(rd):
    assert rd.incr("n") == 1 and type(rd["n"]) is int
    assert rd.incr("n", 41) == 42
    assert rd.incr("n", -50) == -8
    assert rd.incr("f", 0.5) == 0.5 and type(rd["f"]) is float
    assert rd.incr("n", 1.5) == -6.5 and type(rd["n"]) is float
    rd["big"] = 2**63 - 1
    with pytest.raises(OverflowError):
        rd.incr("big")
    assert rd["big"] == 2**63 - 1
    with pytest.raises(OverflowError):
        rd.incr("m", 2**63)
    assert "m" not in rd
    rd["s"] = "text"
    for key, delta in (("s", 1), ("n", "1"), ("n", None), ("n", True)):
        with pytest.raises(TypeError):
            rd.incr(key, delta)
    rd["t"] = True  # a bool is not a number here
    with pytest.raises(TypeError):
        rd.incr("t")
    assert rd["s"] == "text" and rd["n"] == -6.5


def test_incr_from_processes_loses_nothing(rd, url):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=redis_children.incr_worker, args=(url, rd.name, 150, barrier))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert rd["counter"] == 600


def test_compare_and_set_compares_type_and_content(rd):
    rd["k"] = 1
    assert not rd.compare_and_set("k", 1.0, "x")
    assert not rd.compare_and_set("k", True, "x")
    assert rd.compare_and_set("k", 1, 1.0) and type(rd["k"]) is float
    assert not rd.compare_and_set("k", 1, "y")
    rd["a"] = np.arange(4, dtype="i4")
    assert not rd.compare_and_set("a", np.arange(4, dtype="i8"), 0)
    assert not rd.compare_and_set("a", np.arange(4, dtype="i4").reshape(2, 2), 0)
    assert rd.compare_and_set("a", np.arange(4, dtype="i4"), "swapped")
    assert rd.compare_and_set("new", MISSING, "first")
    assert not rd.compare_and_set("new", MISSING, "second")
    assert not rd.compare_and_set("absent", None, 1)  # None is a value, not absence
    assert rd["new"] == "first" and "absent" not in rd


def test_version_changes_on_every_write_and_delete(rd):
    assert rd.version("k") is None
    rd["k"] = 1
    seen = [rd.version("k")]
    rd["k"] = 1  # the same value again is still a write
    seen.append(rd.version("k"))
    rd.incr("k")
    seen.append(rd.version("k"))
    del rd["k"]
    assert rd.version("k") is None
    rd["k"] = 1
    seen.append(rd.version("k"))
    assert all(isinstance(v, int) for v in seen) and len(set(seen)) == 4
    rd["other"] = 1
    assert rd.version("k") == seen[-1]


def test_wait_wakes_on_a_write_from_another_process(rd, url):
    rd["k"] = "old"
    version = rd.version("k")
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    p = ctx.Process(target=redis_children.write_after, args=(url, rd.name, "k", "new", started))
    p.start()
    try:
        started.set()
        new = rd.wait("k", version, timeout=60)
        assert new != version and rd["k"] == "new" and new == rd.version("k")
    finally:
        p.join(60)
    assert p.exitcode == 0


def test_wait_returns_at_once_for_a_stale_version_and_times_out_otherwise(rd):
    rd["k"] = 1
    assert rd.wait("k", version=-5, timeout=0) == rd.version("k")
    with pytest.raises(TimeoutError):
        rd.wait("k", timeout=0.2)
    with pytest.raises(TimeoutError):
        rd.wait("absent", None, timeout=0.1)
    with pytest.raises(ValueError):
        rd.wait("k", timeout=-1)


def test_wait_for_creation_and_deletion(rd):
    def later(action):
        threading.Timer(0.1, action).start()

    later(lambda: rd.__setitem__("k", 1))
    assert rd.wait("k", None, timeout=30) == rd.version("k") is not None
    later(lambda: rd.__delitem__("k"))
    assert rd.wait("k", timeout=30) is None


def test_waiters_are_counted_only_while_they_wait(rd, client):
    waiters = f"sharedbox:{{{rd.name}}}:waiters"
    seen = []

    def write_when_counted():
        while not client.exists(waiters):
            threading.Event().wait(0.01)
        seen.append(int(client.get(waiters)))
        rd["k"] = 1

    t = threading.Thread(target=write_when_counted)
    t.start()
    assert rd.wait("k", None, timeout=60) is not None
    t.join(60)
    assert seen == [1] and not client.exists(waiters)  # writers stop publishing


def test_clear_empties_each_shard_at_once_and_wakes_waiters(rd):
    rd.update({f"k{i}": i for i in range(50)})
    version = rd.version("k7")
    threading.Timer(0.1, rd.clear).start()
    assert rd.wait("k7", version, timeout=60) is None
    assert len(rd) == 0 and rd.version("k3") is None and list(rd.items()) == []
    rd["k7"] = "again"
    assert rd.version("k7") not in (None, version)


def test_wait_async(rd):
    rd["k"] = 1

    async def main():
        waiter = asyncio.ensure_future(rd.wait_async("k", timeout=30))
        await asyncio.sleep(0.05)
        rd["k"] = 2
        got = await waiter
        # Cancelling a waiter ends it (its worker thread too).
        other = asyncio.ensure_future(rd.wait_async("k"))
        await asyncio.sleep(0.05)
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
        return got

    assert asyncio.run(main()) == rd.version("k")


def test_lock_excludes_other_processes(rd, url):
    rd["plain"] = 0
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=redis_children.locked_increments,
                         args=(url, rd.name, 40, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert rd["plain"] == 120


def test_lock_basics(rd, url):
    other = RedisDict(rd.name, url=url, create=False)
    try:
        a, b = rd.lock("x"), other.lock("x")
        assert not a.locked()
        assert a.acquire() and a.locked() and not a.recovered
        assert not b.acquire(timeout=0)
        assert not b.acquire(timeout=0.1)
        with pytest.raises(RuntimeError, match="already held"):
            a.acquire()
        a.release()
        with pytest.raises(RuntimeError, match="not held"):
            a.release()
        with b:
            assert b.locked() and not a.acquire(timeout=0)
        assert not b.locked()
        assert rd.lock("y").acquire(timeout=0)  # locks of other names are independent
    finally:
        other.close()


def test_lock_whose_lease_ran_out_cannot_be_released(rd, client):
    lock = rd.lock("lapse")
    lock.acquire()
    client.delete(f"sharedbox:{{{rd.name}}}:lock:lapse")  # as if the lease had run out
    thief = rd.lock("lapse")
    assert thief.acquire(timeout=0)
    with pytest.raises(RuntimeError, match="lease"):
        lock.release()
    thief.release()


def test_lock_of_a_killed_holder_is_recovered_after_its_lease(rd, url):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=redis_children.hold_lock_forever, args=(url, rd.name, 3.0, ready))
    p.start()
    try:
        assert ready.wait(60)
    finally:
        p.kill()
        p.join(30)
    lock = rd.lock("crash")
    # The lease outlives its holder (Redis cannot see the process die): the
    # lock is not free at once, as a robust mutex would be, but after the lease.
    assert lock.locked() and not lock.acquire(timeout=0)
    assert lock.acquire(timeout=60)
    assert lock.recovered
    lock.release()
    assert lock.acquire(timeout=0) and not lock.recovered
    lock.release()


# -- stats --------------------------------------------------------------------------------------------


def test_stats_and_sizing(rd):
    rd.update({f"k{i}": "v" * 10 for i in range(10)})
    stats = rd.get_stats()
    assert stats["total_entries"] == 10 and stats["avg_key_utf8_bytes"] == 2.0
    assert stats["avg_value_pickle_bytes"] == 11.0 and stats["segment_name"] == rd.name
    advice = rd.recommend_sizing(1000)
    assert advice["sizing_recommendation"]["total_segment_size"] > 0
    assert advice["target_entries"] == 1000 and advice["current_stats"]["total_entries"] == 10


# -- cluster and shards -------------------------------------------------------------------------------------


def test_cluster_dict_lives_in_one_slot(redis_cluster):
    d = RedisDict(unique_name(), url=redis_cluster.url)
    try:
        d.update({f"k{i}": i for i in range(50)})
        with d.lock():
            pass
        r = redis.RedisCluster.from_url(redis_cluster.url)
        keys = [k for node_keys in [r.keys(f"sharedbox:{{{d.name}}}*",
                                           target_nodes=redis.RedisCluster.ALL_NODES)]
                for k in node_keys]
        assert len(keys) >= 5
        assert len({r.keyslot(k) for k in keys}) == 1
        r.close()
        assert d.incr("n") == 1 and len(d) == 51 and sorted(d.keys_atomic())[0] == "k0"
    finally:
        drop_redis_dict(d)


def shard_of(key, shards):
    return zlib.crc32(key.encode()) % shards


def test_shards_spread_a_dict_and_split_max_keys(redis_cluster):
    d = RedisDict(unique_name(), url=redis_cluster.url, shards=3, max_keys=6)
    try:
        stored = []
        for i in range(100):
            try:
                d[f"k{i}"] = i
                stored.append(f"k{i}")
            except TooManyKeysError:
                pass
        per_shard = [sum(shard_of(k, 3) == s for k in stored) for s in range(3)]
        # Each shard holds at most ceil(6 / 3) keys: never more than max_keys in all.
        assert per_shard == [2, 2, 2] and len(d) == 6
        r = redis.RedisCluster.from_url(redis_cluster.url)
        slots = {r.keyslot(f"sharedbox:{{{d.name}#{s}}}") for s in range(3)}
        assert len(slots) == 3
        assert sum(r.hlen(f"sharedbox:{{{d.name}#{s}}}") for s in range(3)) == len(d)
        r.close()
    finally:
        drop_redis_dict(d)


def test_sharded_keys_atomic_is_a_snapshot_per_shard(redis_cluster):
    """With shards, keys_atomic() is a snapshot of each shard: a writer that
    keeps exactly one or two keys in shard 0 (insert the next, then delete
    the previous) is never seen with none there, nor with a gap."""
    d = RedisDict(unique_name(), url=redis_cluster.url, shards=3, max_keys=300)
    keys = [k for k in (f"w{i}" for i in range(2000)) if shard_of(k, 3) == 0][:400]
    others = [k for k in (f"o{i}" for i in range(100)) if shard_of(k, 3) != 0][:20]
    d.update({k: 0 for k in others})
    d[keys[0]] = 0
    stop = threading.Event()

    def writer():
        w = RedisDict(d.name, url=redis_cluster.url, create=False)
        i = 0
        while not stop.is_set() and i + 1 < len(keys):
            w[keys[i + 1]] = i + 1
            del w[keys[i]]
            i += 1
        w.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(150):
            snap = d.keys_atomic()
            mine = sorted((keys.index(k) for k in snap if k.startswith("w")))
            assert mine and len(mine) <= 2 and mine[-1] - mine[0] == len(mine) - 1, mine
            assert set(others) <= set(snap)
            assert len(d) in (len(others) + 1, len(others) + 2)
    finally:
        stop.set()
        t.join(60)
        drop_redis_dict(d)


def test_a_missing_redis_server_fails_instead_of_skipping(monkeypatch):
    import redis_servers

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="apt-get install redis-server"):
        redis_servers.Server()


# -- identity: unlink() and is_current() act on the dict this handle opened -------


def test_unlink_removes_only_the_dict_this_handle_opened(url):
    name = unique_name()
    old = RedisDict(name, {"a": 1}, url=url)
    assert old.is_current()
    with pytest.raises(SharedDictOpenError):
        old.unlink()
    old.close()
    assert old.is_current()  # also on a closed handle
    twin = RedisDict(name, url=url, create=False)
    twin.close()
    twin.unlink()
    assert not old.is_current()
    new = RedisDict(name, {"b": 2}, url=url)  # the name reused
    assert not old.is_current() and new.is_current()
    with pytest.raises(SegmentReplacedError):
        old.unlink()
    assert new["b"] == 2  # left alone
    new.close()
    new.unlink()
    with pytest.raises(SegmentNotFoundError):
        new.unlink()


def test_temporary_is_deleted_on_close(url, client):
    d = RedisDict.temporary({"k": 1}, url=url, max_keys=10)
    name = d.name
    assert d.created and d["k"] == 1 and name.startswith("sbx_tmp_")
    assert client.exists(f"sharedbox:{{{name}}}:meta")
    other = RedisDict(name, url=url, create=False)
    other.close()  # an ordinary handle: closing it deletes nothing
    assert client.exists(f"sharedbox:{{{name}}}:meta")
    d.close()
    assert not client.exists(f"sharedbox:{{{name}}}:meta")
    assert not client.keys(f"sharedbox:{{{name}}}*")
