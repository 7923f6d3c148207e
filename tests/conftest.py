import os
import uuid

import pytest

from sharedbox import SharedDict
from sharedbox import _core


def unique_name(prefix: str = "sbxtest") -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def remove_segment(name: str) -> None:
    try:
        _core.unlink_segment(name)
    except FileNotFoundError:
        pass


@pytest.fixture
def name():
    """A fresh segment name, unlinked after the test whatever happened."""
    n = unique_name()
    yield n
    remove_segment(n)


@pytest.fixture
def sd(name):
    """A small SharedDict, closed and unlinked after the test."""
    d = SharedDict(name, size=4 << 20, max_keys=1000)
    yield d
    if not d.is_closed():
        assert d._check_integrity() == []
        d.close()


# -- Redis: real servers, started once per session ----------------------------
# RedisDict runs the same conformance tests as SharedDict (mapping_backend).
# A redis-server that cannot be started fails these tests; it never skips them.


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server on a free loopback port, no persistence."""
    from redis_servers import Server

    try:
        server = Server()
    except RuntimeError as exc:
        pytest.fail(f"cannot start redis-server for the RedisDict tests: {exc}")
    yield server
    server.remove()


@pytest.fixture(scope="session")
def redis_cluster():
    """A 3-master Redis Cluster on loopback."""
    from redis_servers import Cluster

    try:
        cluster = Cluster()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a Redis Cluster for the RedisDict tests: {exc}")
    yield cluster
    cluster.remove()


def drop_redis_dict(d) -> None:
    """Close d and delete it from its server, whatever state it is in."""
    from sharedbox import SegmentNotFoundError

    d.close()
    try:
        d.unlink()
    except SegmentNotFoundError:
        pass


BACKENDS = ["shm", "redis", "redis-cluster"]


@pytest.fixture(params=BACKENDS)
def mapping_backend(request):
    """A factory of empty dicts of one backend (each test runs once per
    backend: shm = SharedDict, redis = RedisDict on one server,
    redis-cluster = RedisDict spread over 3 shards of a 3-master cluster).
    Everything it made is closed and removed after the test."""
    made = []
    backend = request.param
    if backend == "redis":
        url, shards = request.getfixturevalue("redis_server").url, 1
    elif backend == "redis-cluster":
        url, shards = request.getfixturevalue("redis_cluster").url, 3

    def make(data=None, *, max_keys=1000, **options):
        if backend == "shm":
            d = SharedDict(unique_name(), data, size=options.pop("size", 4 << 20),
                           max_keys=max_keys, **options)
        else:
            from sharedbox import RedisDict

            d = RedisDict(unique_name(), data, url=url, max_keys=max_keys, shards=shards,
                          **options)
        made.append(d)
        return d

    make.backend = backend
    yield make
    for d in made:
        if backend == "shm":
            if not d.is_closed():
                assert d._check_integrity() == []
                d.close()
            remove_segment(d.name)
        else:
            drop_redis_dict(d)


@pytest.fixture
def md(mapping_backend):
    """An empty dict (max_keys=1000) of each backend in turn ("mapping dict")."""
    return mapping_backend()
