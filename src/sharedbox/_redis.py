"""RedisDict: the SharedDict API on a Redis hash, for more than one machine.

One dict is one Redis hash whose fields are the keys (UTF-8) and whose values
are the bytes the shared-memory engine would store (``_values.encode``), so a
value copies between the two backends byte for byte.  Every key of a dict
carries the hash tag ``{name}`` and so lives in one Redis Cluster slot: the
Lua scripts that make writes atomic may touch all of them.

Keys (``T`` is the dict's name, or ``name#i`` for shard i when shards > 1)::

    sharedbox:{name}:meta         hash: format, version, max_keys, shards
    sharedbox:{T}                 hash: key -> encoded value
    sharedbox:{T}:ver             hash: key -> version (an int; absent = no key)
    sharedbox:{T}:seq             string: the shard's last version handed out;
                                  it exists while the dict does (writes check it)
    sharedbox:{T}:waiters         string: how many wait() calls wait on the shard;
                                  writers publish notices only while it exists
    sharedbox:{name}:locks        set: names of the dict's locks (for unlink)
    sharedbox:{name}:lock:L       string: lock L's holder token, with a lease (PX)
    sharedbox:{name}:owner:L      string: lock L's last holder, without expiry;
                                  still there on acquire = the holder died

Channels (SPUBLISH on Redis 7+, PUBLISH before)::

    sharedbox:{T}:w:KEY           a write or delete of KEY (message: its version)
    sharedbox:{name}:l:L          lock L was released

Redis runs one script at a time, so each script below is atomic: that is what
gives single-key operations, max_keys, versions and compare_and_set the same
guarantees as the shared-memory engine.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView
from typing import Any, Callable, Iterable, Iterator, NoReturn, Optional
from urllib.parse import urlsplit, urlunsplit

from . import _values
from ._sentinel import MISSING
from .errors import (
    BackendUnavailableError,
    IncompatibleSegmentError,
    SegmentFullError,
    SegmentNotFoundError,
    SegmentReplacedError,
    SharedDictClosedError,
    SharedDictOpenError,
    TooManyKeysError,
)

__all__ = ["RedisDict", "RedisLock", "DEFAULT_URL", "KEY_PREFIX"]

DEFAULT_URL = "redis://localhost:6379/0"
KEY_PREFIX = "sharedbox:"
FORMAT = b"sharedbox-dict"
FORMAT_VERSION = 1
# Keys per script call or per HSCAN page: large enough that a round trip is
# shared by many keys, small enough that one script never blocks the server
# (which runs nothing else meanwhile) for more than a few milliseconds.
BATCH = 1000
# A waiter re-reads the version this often even without a notification, in
# case a message was lost with a dropped connection.  Not the wake-up path.
WAIT_GUARD_SECONDS = 5.0
_NOT_GIVEN: Any = object()

# redis-py is an optional dependency (pip install 'sharedbox[redis]') and
# takes a while to import, so it is imported by the first RedisDict, not by
# `import sharedbox`.  Until then no redis-py error can occur, and these
# empty tuples match nothing in the except clauses below.
_redis_py: Any = None
_RedisError: Any = ()
_RConnectionError: Any = ()
_RTimeoutError: Any = ()
_ResponseError: Any = ()
_NoScriptError: Any = ()


def _load_redis() -> None:
    global _redis_py, _RedisError, _RConnectionError, _RTimeoutError, _ResponseError
    global _NoScriptError
    if _redis_py is not None:
        return
    try:
        import redis
        from redis import exceptions
    except ImportError as exc:
        raise ImportError("RedisDict needs redis-py: pip install 'sharedbox[redis]'") from exc
    _RedisError, _ResponseError = exceptions.RedisError, exceptions.ResponseError
    _RConnectionError, _RTimeoutError = exceptions.ConnectionError, exceptions.TimeoutError
    _NoScriptError = exceptions.NoScriptError
    _redis_py = redis

# -- Lua ----------------------------------------------------------------------
# KEYS of the per-shard scripts: [1] data hash, [2] versions hash, [3] seq,
# [4] waiters.  A key's channel is KEYS[1] .. ':w:' .. key; PUBLISH stands
# for the publish command (SPUBLISH or PUBLISH), put in when the script is
# registered, so that it does not travel with every call.  Writers publish
# only while the shard has waiters (KEYS[4] exists): most writes then cost no
# notification at all.  A waiter counts itself in before it subscribes and
# reads the version, so a write it could miss was either seen by that read
# or published.
# Return codes: -2 the dict is gone, -1 too many keys.  seq starts at 1 when
# the dict is made, so an INCR that returns 1 found no seq: the dict was
# unlinked (or flushed), and the write must not recreate half of it.  A
# version skipped by a write that then stores nothing is harmless: versions
# only have to differ.

# ARGV[1] key limit of the shard, [2] mode: 'a' always, 'n' only if absent,
# 'c' only if the stored bytes equal ARGV[5]; [3] field, [4] value.
# Returns 1 stored, 0 condition not met.
_PUT = """
local ver = redis.call('INCR', KEYS[3])
if ver == 1 then redis.call('DEL', KEYS[3]) return -2 end
local mode, field = ARGV[2], ARGV[3]
if mode ~= 'a' then
  local cur = redis.call('HGET', KEYS[1], field)
  if mode == 'n' and cur then return 0 end
  if mode == 'c' and cur ~= ARGV[5] then return 0 end
end
if redis.call('HSET', KEYS[1], field, ARGV[4]) == 1
   and redis.call('HLEN', KEYS[1]) > tonumber(ARGV[1]) then
  redis.call('HDEL', KEYS[1], field)
  return -1
end
redis.call('HSET', KEYS[2], field, ver)
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('PUBLISH', KEYS[1] .. ':w:' .. field, ver)
end
return 1
"""

# ARGV[1] key limit, then field, value, field, value...  All or nothing.
# Every key of the batch gets the same new version (a version only has to
# change when its key is written).  New keys are counted only when the batch
# could overflow the limit, which spares a lookup per key otherwise.
_PUT_MANY = """
local ver = redis.call('INCR', KEYS[3])
if ver == 1 then redis.call('DEL', KEYS[3]) return -2 end
local n, limit = (#ARGV - 1) / 2, tonumber(ARGV[1])
local len = redis.call('HLEN', KEYS[1])
if len + n > limit then
  local fields = {}
  for i = 2, #ARGV, 2 do fields[#fields + 1] = ARGV[i] end
  local new, cur = 0, redis.call('HMGET', KEYS[1], unpack(fields))
  for i = 1, #cur do if not cur[i] then new = new + 1 end end
  if len + new > limit then return -1 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
local versions, j = {}, 0
for i = 2, #ARGV, 2 do
  versions[j + 1], versions[j + 2], j = ARGV[i], ver, j + 2
end
redis.call('HSET', KEYS[2], unpack(versions))
if redis.call('EXISTS', KEYS[4]) == 1 then
  local chan = KEYS[1] .. ':w:'
  for i = 2, #ARGV, 2 do redis.call('PUBLISH', chan .. ARGV[i], ver) end
end
return 1
"""

# ARGV[1] field, ARGV[2] '1' to return the removed value.
# Returns nil if absent, else 1 (or the removed value).
_DELETE = """
local old = 1
if ARGV[2] == '1' then old = redis.call('HGET', KEYS[1], ARGV[1]) end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('PUBLISH', KEYS[1] .. ':w:' .. ARGV[1], '')
end
return old
"""

# Removes every key of the shard at one instant; returns how many.
_CLEAR = """
local fields, chan = redis.call('HKEYS', KEYS[1]), KEYS[1] .. ':w:'
if redis.call('EXISTS', KEYS[4]) == 1 then
  for i = 1, #fields do redis.call('PUBLISH', chan .. fields[i], '') end
end
redis.call('DEL', KEYS[1], KEYS[2])
return #fields
"""

# A waiter leaves (KEYS[1]: waiters).  The last one deletes the count, so
# that writers stop publishing; atomic, so a waiter arriving meanwhile counts.
_WAITER_LEAVE = """
if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: meta, seq of shard 0 when it shares meta's slot (else meta again).
# ARGV: format, version, max_keys, shards, create ('1'/'0'), a fresh identity.
# Returns {created, max_keys, shards, version, format, identity} or an error.
# The identity (random, written once) tells this dict from a later one that
# reuses the name: unlink() and is_current() compare it.
_OPEN = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  if ARGV[5] ~= '1' then return {-1} end
  redis.call('HSET', KEYS[1], 'format', ARGV[1], 'version', ARGV[2],
             'max_keys', ARGV[3], 'shards', ARGV[4], 'id', ARGV[6])
  if KEYS[2] ~= KEYS[1] then redis.call('SET', KEYS[2], 1, 'NX') end
  return {1, ARGV[3], ARGV[4], ARGV[2], ARGV[1], ARGV[6]}
end
if t ~= 'hash' then return {-2, t} end
local m = redis.call('HMGET', KEYS[1], 'max_keys', 'shards', 'version', 'format', 'id')
return {0, m[1], m[2], m[3], m[4], m[5]}
"""

# KEYS: lock, owner, locks set.  ARGV: token, lease ms, lock name.
# Returns 1 acquired, 2 acquired from a holder that never released (died),
# else minus the lease left in ms (at most 0).
_LOCK_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local prev = redis.call('GET', KEYS[2])
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[3])
  if prev then return 2 end
  return 1
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = 0 end
return -left
"""

# KEYS: lock, owner.  ARGV: token, publish command, channel.  1 released, 0 not held.
_LOCK_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call(ARGV[2], ARGV[3], '1')
  return 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 0
"""

# KEYS: lock.  ARGV: token, lease ms.  1 renewed, 0 no longer held.
_LOCK_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


# -- helpers ------------------------------------------------------------------
def _safe_url(url: str) -> str:
    """The URL with its password replaced by ***, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("a RedisDict name must not be empty")
    bad = set(name) & set("{}#\0")
    if bad:
        raise ValueError(
            f"a RedisDict name must not contain {''.join(sorted(bad))!r}: braces make Redis "
            "Cluster hash tags and '#' separates shards"
        )
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("a RedisDict name must be encodable as UTF-8") from exc
    if len(encoded) > 255:
        raise ValueError(f"a RedisDict name is at most 255 bytes, got {len(encoded)}")
    return name


def _field(key: Any) -> bytes:
    """A key's UTF-8 bytes (the hash field); the checks of _values.key_bytes."""
    if type(key) is str:
        try:
            return key.encode()
        except UnicodeEncodeError:
            pass  # key_bytes raises the ValueError that SharedDict raises
    return _values.key_bytes(key, "RedisDict")


def _check_timeout(what: str, value: Any, allow_none: bool = True) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds{' or None' if allow_none else ''}")
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return float(value)


class _Cancelled(Exception):
    """Ends the worker thread of a cancelled wait_async (nobody reads it)."""


class _Shard:
    """The keys and channel prefix of one of a dict's hashes."""

    __slots__ = ("hash", "ver", "seq", "waiters", "chan")

    def __init__(self, tag: str):
        base = f"{KEY_PREFIX}{{{tag}}}".encode()
        self.hash, self.ver, self.seq = base, base + b":ver", base + b":seq"
        self.waiters = base + b":waiters"
        self.chan = base + b":w:"


def _drop_temporary(where: tuple, options: dict, identity: Any, owner_pid: int) -> None:
    """Deletes a temporary() dict, if this is still the process that made it
    and the name still holds it (runs on close, collection or exit)."""
    if os.getpid() != owner_pid:
        return
    url, name = where
    try:
        d = RedisDict(name, url=url, create=False, socket_timeout=options["socket_timeout"],
                      socket_connect_timeout=options["socket_connect_timeout"],
                      cluster=options["cluster"],
                      connection_options=options["connection_options"])
    except Exception:  # already gone, or the server is: nothing to do
        return
    d._identity = identity  # unlink only the dict temporary() made
    d.close()
    try:
        d.unlink()
    except Exception:
        pass


def _attach(url: str, name: str, allow_pickle: bool, options: dict) -> "RedisDict":
    return RedisDict(name, url=url, create=False, allow_pickle=allow_pickle, **options)


class _Keys(KeysView):
    _mapping: Any  # set by KeysView.__init__
    def __iter__(self) -> Iterator[str]:
        for key, _ in self._mapping._scan(False):
            yield key


class _Items(ItemsView):
    _mapping: Any
    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self._mapping._scan(True)

    def __contains__(self, item: object) -> bool:
        key, value = item  # type: ignore[misc]
        found = self._mapping.get(key, MISSING)
        return found is not MISSING and (found is value or found == value)


class _Values(ValuesView):
    _mapping: Any
    def __iter__(self) -> Iterator[Any]:
        for _, value in self._mapping._scan(True):
            yield value


# -- the dict -----------------------------------------------------------------
class RedisDict(MutableMapping):
    """A dict of str keys in a Redis hash, shared by every process that can
    reach the server: the SharedDict API, with the same value encoding.

    ``RedisDict(name, data=None, *, url="redis://localhost:6379/0",
    create=True, max_keys=128, allow_pickle=True)`` opens the dict ``name``
    on that server, creating it unless ``create=False``; ``max_keys`` and
    ``shards`` apply only when this call creates it.

    Extra keyword-only options: ``shards`` (spread the dict over that many
    hashes, hence Redis Cluster nodes; see the guide for what ``len`` and
    ``keys_atomic`` then guarantee), ``socket_timeout`` (seconds one command
    may wait for the server before BackendUnavailableError, default 10),
    ``socket_connect_timeout`` (default 5), ``cluster`` (True/False; None
    asks the server), ``connection_options`` (more keyword arguments for
    redis-py's client, e.g. TLS certificate paths).
    """

    __hash__ = None  # type: ignore[assignment]  # mutable mapping

    def __init__(
        self,
        name: str,
        data: Optional[Mapping[str, Any]] = None,
        *,
        url: str = DEFAULT_URL,
        create: bool = True,
        max_keys: int = 128,
        allow_pickle: bool = True,
        shards: int = 1,
        socket_timeout: Optional[float] = 10.0,
        socket_connect_timeout: Optional[float] = 5.0,
        cluster: Optional[bool] = None,
        connection_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Open (or create) the dict ``name`` on the Redis server at ``url``.

        Raises SegmentNotFoundError (create=False and no such dict),
        IncompatibleSegmentError (the keys exist but were not made by
        sharedbox), BackendUnavailableError (the server cannot be reached),
        ValueError or TypeError (bad arguments).
        """
        self._r: Any = None
        self._name = _check_name(name)
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        for flag, label in ((create, "create"), (allow_pickle, "allow_pickle")):
            if not isinstance(flag, bool):
                raise TypeError(f"{label} must be a bool, not {type(flag).__name__}")
        for value, label, high in ((max_keys, "max_keys", None), (shards, "shards", 1024)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{label} must be an int, not {type(value).__name__}")
            if value < 1 or (high is not None and value > high):
                raise ValueError(f"{label} must be between 1 and {high or '2**63'}, got {value}")
        if cluster is not None and not isinstance(cluster, bool):
            raise TypeError("cluster must be True, False or None")
        self._url = url
        self._safe = _safe_url(url)
        self._allow_pickle = allow_pickle
        self._options: dict[str, Any] = {
            "socket_timeout": _check_timeout("socket_timeout", socket_timeout),
            "socket_connect_timeout": _check_timeout(
                "socket_connect_timeout", socket_connect_timeout
            ),
            "cluster": cluster,
            "connection_options": dict(connection_options or {}),
        }
        _load_redis()
        self._r = self._connect()
        try:
            self._open(create, max_keys, shards)
        except BaseException:
            self._disconnect()
            raise
        if data is not None:
            self.update(data)

    # -- connection -------------------------------------------------------
    def _connect(self) -> Any:
        opts = self._options
        kwargs: dict[str, Any] = dict(opts["connection_options"])
        kwargs.setdefault("socket_timeout", opts["socket_timeout"])
        kwargs.setdefault("socket_connect_timeout", opts["socket_connect_timeout"])
        cluster = opts["cluster"]
        try:
            if cluster is None:
                # One INFO on a plain connection says whether this is a cluster node.
                probe = _redis_py.Redis.from_url(self._url, **kwargs)
                try:
                    info = probe.info("server")
                    cluster = bool(probe.info("cluster").get("cluster_enabled"))
                finally:
                    probe.close()
            if cluster:
                client = _redis_py.RedisCluster.from_url(self._url, **kwargs)
                info = client.info("server", target_nodes=client.get_random_node())
            else:
                # No automatic retries: a retried compare_and_set could report
                # False for its own write.  The next call reconnects instead.
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                kwargs.setdefault("retry", Retry(NoBackoff(), 0))
                client = _redis_py.Redis.from_url(self._url, **kwargs)
                if opts["cluster"] is not None:
                    info = client.info("server")
        except _RedisError as exc:
            self._fail(exc)
        self._cluster = bool(cluster)
        major = int(str(info.get("redis_version", "0")).split(".")[0] or 0)
        # Sharded pub/sub (Redis 7) keeps a notice on the node that owns the
        # slot; classic PUBLISH would be broadcast to every cluster node.
        self._sharded_pubsub = major >= 7
        version = tuple(int(x) for x in str(info.get("redis_version", "0.0")).split(".")[:2])
        self._hscan_novalues = version >= (7, 4)  # HSCAN ... NOVALUES
        self._publish = b"SPUBLISH" if self._sharded_pubsub else b"PUBLISH"
        self._local = threading.local()
        # Weak: a thread that ends drops its connection (closed when collected).
        self._conns: weakref.WeakSet = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._call: Callable[..., Any] = client.execute_command if cluster else self._call_direct
        publish = self._publish.decode()
        self._put = client.register_script(_PUT.replace("'PUBLISH'", f"'{publish}'"))
        self._put_many = client.register_script(_PUT_MANY.replace("'PUBLISH'", f"'{publish}'"))
        self._delete = client.register_script(_DELETE.replace("'PUBLISH'", f"'{publish}'"))
        self._clear = client.register_script(_CLEAR.replace("'PUBLISH'", f"'{publish}'"))
        self._waiter_leave = client.register_script(_WAITER_LEAVE)
        self._open_script = client.register_script(_OPEN)
        self._lock_acquire = client.register_script(_LOCK_ACQUIRE)
        self._lock_release = client.register_script(_LOCK_RELEASE)
        self._lock_renew = client.register_script(_LOCK_RENEW)
        return client

    def _open(self, create: bool, max_keys: int, shards: int) -> None:
        name = self._name
        self._meta = f"{KEY_PREFIX}{{{name}}}:meta".encode()
        self._locks_key = f"{KEY_PREFIX}{{{name}}}:locks".encode()
        first_seq = f"{KEY_PREFIX}{{{name}}}:seq".encode() if shards == 1 else self._meta
        # A key at our name that sharedbox did not make is refused, not adopted.
        self._refuse_foreign(f"{KEY_PREFIX}{{{name}}}".encode())
        try:
            reply = self._open_script(
                keys=[self._meta, first_seq],
                args=[FORMAT, FORMAT_VERSION, max_keys, shards, "1" if create else "0",
                      uuid.uuid4().hex],
            )
        except _RedisError as exc:
            self._fail(exc)
        status = int(reply[0])
        if status == -1:
            raise SegmentNotFoundError(f"no RedisDict named {name!r} at {self._safe}")
        if status == -2:
            raise IncompatibleSegmentError(
                f"{self._meta.decode()} at {self._safe} is a Redis {reply[1].decode()}, "
                "not a sharedbox dict's metadata"
            )
        fmt, version = reply[4], reply[3]
        if fmt != FORMAT or not version or not reply[1] or not reply[2]:
            raise IncompatibleSegmentError(
                f"{self._meta.decode()} at {self._safe} is not a sharedbox dict's metadata"
            )
        if int(version) > FORMAT_VERSION:
            raise IncompatibleSegmentError(
                f"RedisDict {name!r} at {self._safe} has format version {int(version)}; this "
                f"sharedbox reads version {FORMAT_VERSION}"
            )
        self._created = status == 1
        self._identity = reply[5] if len(reply) > 5 else None
        self._max_keys = int(reply[1])
        self._nshards = int(reply[2])
        tags = [name] if self._nshards == 1 else [f"{name}#{i}" for i in range(self._nshards)]
        self._shards = [_Shard(t) for t in tags]
        # Each shard holds at most its share, so the whole never exceeds max_keys.
        self._limit = -(-self._max_keys // self._nshards)
        s0 = self._shards[0]
        self._hash0, self._ver0, self._seq0, self._chan0 = s0.hash, s0.ver, s0.seq, s0.chan
        try:
            pipe = self._r.pipeline(transaction=False)
            for s in self._shards:
                # Attaching repairs a shard whose seq a crashed creator never made.
                pipe.set(s.seq, 1, nx=True)
                pipe.type(s.hash)
                pipe.type(s.ver)
                pipe.type(s.seq)
            replies = pipe.execute()
        except _RedisError as exc:
            self._fail(exc)
        for s, kinds in zip(self._shards, zip(*[iter(replies)] * 4)):
            for key, kind, want in zip((s.hash, s.ver, s.seq), kinds[1:], (b"hash", b"hash", b"string")):
                if kind not in (b"none", want):
                    raise IncompatibleSegmentError(
                        f"{key.decode()} at {self._safe} is a Redis {kind.decode()}, not part "
                        "of a sharedbox dict"
                    )

    def _refuse_foreign(self, key: bytes) -> None:
        try:
            pipe = self._r.pipeline(transaction=False)
            pipe.exists(self._meta)
            pipe.exists(key)
            exists_meta, exists_data = pipe.execute()
        except _RedisError as exc:
            self._fail(exc)
        if exists_data and not exists_meta:
            raise IncompatibleSegmentError(
                f"{key.decode()} exists at {self._safe} but is not a sharedbox dict (it has no "
                f"{self._meta.decode()}); choose another name or delete that key"
            )

    def _fail(self, exc: BaseException) -> NoReturn:
        """Re-raise a redis-py error as the sharedbox error it stands for."""
        if isinstance(exc, (_RConnectionError, _RTimeoutError)) or type(exc).__name__.startswith(
            ("Cluster", "MaxConnections")
        ):
            what = "timed out" if isinstance(exc, _RTimeoutError) else "is unreachable"
            raise BackendUnavailableError(
                f"Redis at {self._safe} {what} ({type(exc).__name__}: {exc})"
            ) from exc
        text = str(exc)
        if isinstance(exc, _ResponseError) and text.startswith("WRONGTYPE"):
            raise IncompatibleSegmentError(
                f"a key of RedisDict {self._name!r} at {self._safe} holds another kind of Redis "
                "value: it is not a sharedbox dict"
            ) from exc
        if isinstance(exc, _ResponseError) and text.startswith("OOM"):
            raise SegmentFullError(
                f"Redis at {self._safe} is out of memory (maxmemory): {text}; the dict is unchanged"
            ) from exc
        raise RuntimeError(f"Redis at {self._safe} refused a command: {text}") from exc

    def _eval(self, script: Any, r: Any, nkeys: int, *keys_and_args: Any) -> Any:
        """EVALSHA, loading the script if the server does not have it (yet, or
        any more after a restart)."""
        try:
            return self._call("EVALSHA", script.sha, nkeys, *keys_and_args)
        except _NoScriptError:
            return script(keys=keys_and_args[:nkeys], args=keys_and_args[nkeys:], client=r)

    def _direct_conn(self) -> Any:
        """This thread's own connection to the server (made on first use)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():  # new thread, or a forked child
            conn = self._client().connection_pool.make_connection()
            with self._conns_lock:
                self._conns.add(conn)
            local.conn, local.pid = conn, os.getpid()
        return conn

    def _call_direct(self, *args: Any) -> Any:
        """One command on this thread's own connection (one server, not a
        cluster).  The single-key operations go this way: redis-py's generic
        path (pool lock, a readiness poll, retry wrapper, reply callbacks)
        costs about as much client time as the round trip itself, and a
        RedisDict operation should cost what a hand-written HGET costs."""
        conn = self._direct_conn()
        try:
            conn.send_command(*args)
            return conn.read_response()
        except _ResponseError:
            raise  # the server answered: the connection is fine
        except BaseException:
            conn.disconnect()  # reconnects on its next command
            raise

    def _client(self) -> Any:
        r = self._r
        if r is None:
            raise SharedDictClosedError(f"RedisDict {self._name!r} is closed")
        return r

    def _shard(self, field: bytes) -> _Shard:
        return self._shards[zlib.crc32(field) % self._nshards]

    def _check_put(self, code: int, batch: bool = False) -> None:
        if code == -1:
            raise TooManyKeysError(
                f"RedisDict {self._name!r} holds max_keys={self._max_keys} keys"
                + (f" ({self._limit} per shard)" if self._nshards > 1 else "")
                + "; delete keys or create a dict with a larger max_keys. "
                + ("No key of this batch was stored (earlier batches of the same update() were)."
                   if batch else "The dict is unchanged.")
            )
        if code == -2:
            raise SegmentNotFoundError(
                f"RedisDict {self._name!r} no longer exists at {self._safe} (unlinked, flushed, "
                "or the server restarted without its data)"
            )

    # -- single-key operations ---------------------------------------------
    def __getitem__(self, key: str) -> Any:
        field = _field(key)
        r = self._r
        if r is None:
            self._client()
        h = self._hash0 if self._nshards == 1 else self._shard(field).hash
        try:
            data = self._call("HGET", h, field)
        except _RedisError as exc:
            self._fail(exc)
        if data is None:
            raise KeyError(key)
        return _values.decode(data, self._allow_pickle)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value for key if key is present, else default."""
        try:
            return self[key]
        except KeyError:
            return default

    def _store(self, key: str, field: bytes, data: bytes, mode: bytes, expected: bytes = b"") -> int:
        r = self._r
        if r is None:
            self._client()
        s = self._shards[0] if self._nshards == 1 else self._shard(field)
        try:
            if mode == b"c":
                code = self._eval(self._put, r, 4, s.hash, s.ver, s.seq, s.waiters,
                                  self._limit, mode, field, data, expected)
            else:
                code = self._eval(self._put, r, 4, s.hash, s.ver, s.seq, s.waiters,
                                  self._limit, mode, field, data)
        except _RedisError as exc:
            self._fail(exc)
        if code < 0:
            self._check_put(code)
        return code

    def __setitem__(self, key: str, value: Any) -> None:
        field = _field(key)  # a bad key is reported before a bad value
        self._store(key, field, _values.encode(value, self._allow_pickle), b"a")

    def _remove(self, key: str, want_value: bool) -> Any:
        field = _field(key)
        r = self._client()
        s = self._shards[0] if self._nshards == 1 else self._shard(field)
        try:
            return self._eval(self._delete, r, 4, s.hash, s.ver, s.seq, s.waiters, field,
                              b"1" if want_value else b"0")
        except _RedisError as exc:
            self._fail(exc)

    def __delitem__(self, key: str) -> None:
        if self._remove(key, False) is None:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        field = _field(key)
        r = self._client()
        h = self._hash0 if self._nshards == 1 else self._shard(field).hash
        try:
            return bool(self._call("HEXISTS", h, field))
        except _RedisError as exc:
            self._fail(exc)

    def __len__(self) -> int:
        """The number of keys: exact at one instant with one shard; with
        shards, the sum of each shard's count, each exact at its own instant."""
        return sum(self._per_shard("HLEN"))

    def _per_shard(self, command: str) -> list:
        r = self._client()
        try:
            if self._nshards == 1:
                return [r.execute_command(command, self._hash0)]
            pipe = r.pipeline(transaction=False)
            for s in self._shards:
                pipe.execute_command(command, s.hash)
            return pipe.execute()
        except _RedisError as exc:
            self._fail(exc)

    # -- iteration -----------------------------------------------------------
    def _scan(self, with_values: bool) -> Iterator[tuple[str, Any]]:
        """(key, value or None) pairs, BATCH per round trip (HSCAN): weakly
        consistent, each element whole, no key twice."""
        r = self._client()
        allow = self._allow_pickle
        for s in self._shards:
            seen: set[bytes] = set()
            cursor: Any = 0
            while True:
                try:
                    if with_values or not self._hscan_novalues:
                        cursor, page = r.hscan(s.hash, cursor, count=BATCH)
                        items: Iterable = page.items()
                    else:
                        cursor, fields = r.hscan(s.hash, cursor, count=BATCH, no_values=True)
                        items = ((f, None) for f in fields)
                except _RedisError as exc:
                    self._fail(exc)
                for field, data in items:
                    if field in seen:  # HSCAN may return an element twice
                        continue
                    seen.add(field)
                    value = _values.decode(data, allow) if with_values else None
                    yield field.decode("utf-8"), value
                if not cursor:
                    break

    def __iter__(self) -> Iterator[str]:
        """Iterate over the keys (HSCAN: weakly consistent; see keys_atomic())."""
        return iter(self.keys())

    def keys(self) -> KeysView[str]:
        """A view of the keys; iterating it pages through them with HSCAN."""
        return _Keys(self)

    def items(self) -> ItemsView[str, Any]:
        """A view of (key, value) pairs, fetched BATCH at a time."""
        return _Items(self)

    def values(self) -> ValuesView[Any]:
        """A view of the values, fetched BATCH at a time."""
        return _Values(self)

    def keys_atomic(self) -> list[str]:
        """The keys at one instant (HKEYS).  With shards, each shard's keys
        are a snapshot of that shard, taken one shard after another."""
        return [f.decode("utf-8") for fields in self._per_shard("HKEYS") for f in fields]

    # -- the rest of MutableMapping --------------------------------------------
    def pop(self, key: str, default: Any = MISSING) -> Any:
        """Remove key and return its value (atomically); default if absent, else KeyError."""
        data = self._remove(key, True)
        if data is None:
            if default is MISSING:
                raise KeyError(key)
            return default
        return _values.decode(data, self._allow_pickle)

    def popitem(self) -> tuple[str, Any]:
        """Remove and return some (key, value) pair; KeyError if empty."""
        for key, _ in self._scan(False):
            value = self.pop(key, MISSING)
            if value is not MISSING:
                return key, value
        raise KeyError("popitem(): RedisDict is empty")

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return d[key], first storing default if key is absent (atomically)."""
        field = _field(key)
        data = _values.encode(default, self._allow_pickle)
        while True:
            if self._store(key, field, data, b"n") == 1:
                return default
            value = self.get(key, MISSING)
            if value is not MISSING:
                return value

    def update(self, other: Any = (), /, **kwds: Any) -> None:  # type: ignore[override]
        """Store many keys: encoded first (a bad value stores nothing), then
        sent BATCH keys per script call, each call all-or-nothing."""
        allow, encode = self._allow_pickle, _values.encode
        if isinstance(other, Mapping):
            pairs: Iterable = other.items()
        elif hasattr(other, "keys"):
            pairs = ((key, other[key]) for key in other.keys())
        else:
            pairs = other
        # Later duplicates win, as in dict.update; each key is sent once.
        pending: dict[bytes, bytes] = {}
        for source in (pairs, kwds.items()):
            for key, value in source:
                if type(key) is str:
                    try:
                        field = key.encode()
                    except UnicodeEncodeError:
                        field = _field(key)  # raises SharedDict's ValueError
                else:
                    field = _field(key)
                pending[field] = encode(value, allow)
        self._put_fields(pending)

    def _put_fields(self, pending: dict[bytes, bytes]) -> None:
        """Store field -> encoded bytes, BATCH per script call, in order; the
        first batch that fails stops the rest."""
        if not pending:
            return
        r = self._client()
        groups: dict[int, list] = {}
        if self._nshards == 1:
            groups[0] = [x for item in pending.items() for x in item]
        else:
            for field, data in pending.items():
                groups.setdefault(zlib.crc32(field) % self._nshards, []).extend((field, data))
        for index, flat in groups.items():
            s = self._shards[index]
            for start in range(0, len(flat), 2 * BATCH):
                try:
                    code = self._eval(self._put_many, r, 4, s.hash, s.ver, s.seq, s.waiters,
                                      self._limit, *flat[start:start + 2 * BATCH])
                except _RedisError as exc:
                    self._fail(exc)
                self._check_put(code, True)

    def clear(self) -> None:
        """Remove every key (each shard at one instant)."""
        r = self._client()
        for s in self._shards:
            try:
                self._clear(keys=[s.hash, s.ver, s.seq, s.waiters], client=r)
            except _RedisError as exc:
                self._fail(exc)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __repr__(self) -> str:
        if self._r is None:
            return f"<RedisDict {self._name!r} at {self._safe} (closed)>"
        return f"<RedisDict {self._name!r} at {self._safe}: {len(self)} of {self._max_keys} keys>"

    # -- coordination ------------------------------------------------------------
    def incr(self, key: str, delta: Any = 1) -> Any:
        """Add delta to the number at key (a missing key counts as 0) and
        return the result, atomically.  int + int stays a 64-bit int
        (OverflowError past it, the dict unchanged); a float on either side
        gives a float; any other stored value or delta is a TypeError."""
        if isinstance(delta, bool) or not isinstance(delta, (int, float)):
            raise TypeError(f"incr() delta must be an int or a float, not {type(delta).__name__}")
        delta = int(delta) if isinstance(delta, int) else float(delta)
        if isinstance(delta, int) and not -(2**63) <= delta < 2**63:
            raise OverflowError("incr() delta does not fit in a 64-bit int")
        field = _field(key)
        r = self._client()
        h = self._hash0 if self._nshards == 1 else self._shard(field).hash
        # Optimistic: read, compute here (exact 64-bit arithmetic; Lua has
        # only doubles), then store only if the bytes are still the ones read.
        while True:
            try:
                old = self._call("HGET", h, field)
            except _RedisError as exc:
                self._fail(exc)
            if old is None:
                current: Any = 0
            elif old[:1] in (b"\x03", b"\x04"):  # the codec's int64 and float64 tags
                current = _values.decode(old, False)
            else:
                raise TypeError(f"incr({key!r}): the stored value is not an int or a float")
            result = current + delta
            if isinstance(result, int) and not -(2**63) <= result < 2**63:
                raise OverflowError(
                    f"incr({key!r}) would leave the 64-bit int range; the dict is unchanged"
                )
            data = _values.encode(result, False)
            if old is None:
                stored = self._store(key, field, data, b"n")
            else:
                stored = self._store(key, field, data, b"c", old)
            if stored == 1:
                return result

    def compare_and_set(self, key: str, expected: Any, new: Any) -> bool:
        """Store new at key if its value is exactly expected (same type and
        content: 1, 1.0 and True differ; arrays by dtype, shape and bytes;
        pickled values by their pickle bytes); expected=MISSING means only if
        key is absent.  Returns whether new was stored, atomically."""
        field = _field(key)
        data = _values.encode(new, self._allow_pickle)
        if expected is MISSING:
            return self._store(key, field, data, b"n") == 1
        want = _values.encode(expected, self._allow_pickle)
        return self._store(key, field, data, b"c", want) == 1

    def version(self, key: str) -> Optional[int]:
        """An int that changes on every write or delete of key; None when absent."""
        field = _field(key)
        r = self._client()
        v = self._ver0 if self._nshards == 1 else self._shard(field).ver
        try:
            got = self._call("HGET", v, field)
        except _RedisError as exc:
            self._fail(exc)
        return None if got is None else int(got)

    def wait(self, key: str, version: Any = _NOT_GIVEN, timeout: Optional[float] = None) -> Optional[int]:
        """Block until key's version differs from version (default: its
        version now) and return the new one (None: deleted).  TimeoutError
        after timeout seconds.  Woken by the writer's notification (pub/sub),
        not by polling."""
        return self._wait(key, version, timeout, None)

    async def wait_async(
        self, key: str, version: Any = _NOT_GIVEN, timeout: Optional[float] = None
    ) -> Optional[int]:
        """wait() for asyncio: runs in a worker thread; cancelling it wakes
        that thread, which then ends."""
        import asyncio

        holder: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._wait, key, version, timeout, holder)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # Wake the worker with a message on its own channel (closing its
            # connection from this thread would race with the worker's use).
            holder["cancelled"] = True
            future.add_done_callback(lambda f: f.exception())  # nobody else will read it
            channel = holder.get("channel")
            if channel is not None:
                try:
                    self._notify(channel)
                except Exception:  # the worker still ends at its timeout or guard
                    pass
            raise

    def _subscribe(self, channel: bytes) -> tuple[Any, Callable[[float], Any]]:
        r = self._client()
        pubsub = r.pubsub(ignore_subscribe_messages=True)
        try:
            if self._sharded_pubsub:
                pubsub.ssubscribe(channel)
                return pubsub, lambda t: pubsub.get_sharded_message(
                    ignore_subscribe_messages=True, timeout=t
                )
            pubsub.subscribe(channel)
            return pubsub, lambda t: pubsub.get_message(ignore_subscribe_messages=True, timeout=t)
        except BaseException:
            pubsub.close()
            raise

    def _notify(self, channel: bytes) -> None:
        """Publish an empty notice on a channel (waiters then re-read)."""
        r = self._client()
        if self._sharded_pubsub:
            r.spublish(channel, b"")
        else:
            r.publish(channel, b"")

    def _wait(
        self, key: str, version: Any, timeout: Optional[float], holder: Optional[dict]
    ) -> Optional[int]:
        field = _field(key)
        timeout = _check_timeout("timeout", timeout)
        s = self._shards[0] if self._nshards == 1 else self._shard(field)
        deadline = None if timeout is None else time.monotonic() + timeout
        r = self._client()
        try:
            # Count in (writers publish only while a shard has waiters), then
            # subscribe, then read the version: a write after that read is
            # both published and heard.
            r.incr(s.waiters)
        except _RedisError as exc:
            self._fail(exc)
        try:
            pubsub, receive = self._subscribe(s.chan + field)
        except BaseException as exc:
            self._leave(r, s)
            if isinstance(exc, _RedisError):
                self._fail(exc)
            raise
        if holder is not None:
            holder["channel"] = s.chan + field
        try:
            current = self.version(key)
            if version is _NOT_GIVEN:
                version = current
            while current == version:
                left = WAIT_GUARD_SECONDS if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{key!r} in RedisDict {self._name!r} did not change within {timeout} s"
                    )
                try:
                    receive(min(left, WAIT_GUARD_SECONDS))
                except _RedisError as exc:
                    self._fail(exc)
                if holder is not None and holder.get("cancelled"):
                    raise _Cancelled()
                current = self.version(key)
            return current
        finally:
            pubsub.close()
            self._leave(r, s)

    def _leave(self, r: Any, s: _Shard) -> None:
        """Count a waiter out.  If the server is gone, the count stays: it
        only makes writers publish notices nobody hears."""
        try:
            self._waiter_leave(keys=[s.waiters], client=r)
        except _RedisError:
            pass

    def lock(self, name: str = "default", *, lease: float = 10.0) -> "RedisLock":
        """A cross-process lock named ``name`` in this dict (see RedisLock)."""
        return RedisLock(self, name, lease)

    # -- raw encoded values (sharedbox copy) ----------------------------------------
    def _get_raw(self, key: str) -> Optional[bytes]:
        field = _field(key)
        r = self._client()
        h = self._hash0 if self._nshards == 1 else self._shard(field).hash
        try:
            data = r.execute_command("HGET", h, field)
        except _RedisError as exc:
            self._fail(exc)
        return None if data is None else bytes(data)

    def _put_raw(self, key: str, data: bytes) -> None:
        field = _field(key)
        _values.validate(bytes(data), self._allow_pickle)
        self._store(key, field, bytes(data), b"a")

    def _raw_items(self) -> Iterator[tuple[str, bytes]]:
        """(key, encoded bytes) of every key, BATCH per round trip (HSCAN)."""
        r = self._client()
        for s in self._shards:
            seen: set[bytes] = set()
            cursor: Any = 0
            while True:
                try:
                    cursor, page = r.hscan(s.hash, cursor, count=BATCH)
                except _RedisError as exc:
                    self._fail(exc)
                for field, data in page.items():
                    if field not in seen:
                        seen.add(field)
                        yield field.decode("utf-8"), bytes(data)
                if not cursor:
                    break

    def _put_raw_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Store many (key, encoded bytes) pairs, BATCH per script call."""
        pending: dict[bytes, bytes] = {}
        for key, data in items:
            data = bytes(data)
            _values.validate(data, self._allow_pickle)
            pending[_field(key)] = data
        self._put_fields(pending)

    # -- lifecycle ----------------------------------------------------------------
    @property
    def name(self) -> str:
        """The dict's name."""
        return self._name

    @property
    def url(self) -> str:
        """The server's URL, without its password."""
        return self._safe

    @property
    def max_keys(self) -> int:
        """The most keys the dict can hold."""
        return self._max_keys

    @property
    def shards(self) -> int:
        """How many Redis hashes hold the dict."""
        return self._nshards

    @property
    def created(self) -> bool:
        """True if this handle created the dict."""
        return self._created

    @property
    def allow_pickle(self) -> bool:
        """False if this handle refuses to store or load pickled values."""
        return self._allow_pickle

    def _disconnect(self) -> None:
        r, self._r = self._r, None
        if r is not None:
            with self._conns_lock:
                conns, self._conns = list(self._conns), weakref.WeakSet()
            for conn in conns:
                try:
                    conn.disconnect()
                except Exception:
                    pass
            try:
                r.close()
            except Exception:  # closing a dead connection must not fail close()
                pass

    def close(self) -> None:
        """Close this handle's connection; the dict stays on the server
        (unless this handle made it with temporary())."""
        self._disconnect()
        temporary = getattr(self, "_temporary", None)
        if temporary is not None:
            temporary()

    def is_closed(self) -> bool:
        """True once close() has been called on this handle."""
        return self._r is None

    def is_current(self) -> bool:
        """Whether the name still refers to the dict this handle opened (False
        once it was unlinked, and if another dict has taken the name since).
        Works on a closed handle too."""
        r = self._r if self._r is not None else self._connect()
        try:
            try:
                return r.hget(self._meta, "id") == self._identity is not None
            except _RedisError as exc:
                self._fail(exc)
        finally:
            if r is not self._r:
                r.close()

    @classmethod
    def temporary(
        cls,
        data: Optional[Mapping[str, Any]] = None,
        *,
        prefix: str = "sbx_tmp",
        **options: Any,
    ) -> "RedisDict":
        """A new RedisDict under a fresh unique name (``d.name``), deleted from
        the server when this handle is closed (also by a ``with`` block),
        garbage-collected, or at exit of this process.  ``options`` are the
        constructor's keyword arguments (url=, max_keys=, ...)."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        while True:
            name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:16]}"
            d = cls(name, **options)
            if d.created:
                break
            d.close()  # the name was taken (never seen in practice): leave it alone
        d._temporary = weakref.finalize(d, _drop_temporary, (d._url, d._name), d._options,
                                        d._identity, os.getpid())
        if data is not None:
            try:
                d.update(data)
            except BaseException:
                d.close()
                raise
        return d

    def unlink(self) -> None:
        """Delete the dict from the server (its hashes, metadata and locks);
        call close() first (SharedDictOpenError otherwise).  Only the dict this
        handle opened: if the name now holds another one, SegmentReplacedError
        and nothing is deleted.  Other handles' writes then raise
        SegmentNotFoundError."""
        if self._r is not None:
            raise SharedDictOpenError(
                f"RedisDict {self._name!r} is still open: call close() before unlink()"
            )
        r = self._connect()
        try:
            try:
                if not r.exists(self._meta):
                    raise SegmentNotFoundError(f"no RedisDict named {self._name!r} at {self._safe}")
                if r.hget(self._meta, "id") != self._identity:
                    raise SegmentReplacedError(
                        f"RedisDict {self._name!r} at {self._safe} is no longer the dict this "
                        "handle opened (it was unlinked and the name reused); nothing deleted"
                    )
                locks = r.smembers(self._locks_key)
                doomed = [self._meta, self._locks_key]
                for lock in locks:
                    lock_name = lock.decode("utf-8", "replace")
                    doomed += [_lock_key(self._name, "lock", lock_name),
                               _lock_key(self._name, "owner", lock_name)]
                for s in self._shards:
                    doomed += [s.hash, s.ver, s.seq, s.waiters]
                pipe = r.pipeline(transaction=False)
                for key in doomed:
                    pipe.delete(key)  # one key per command: they may sit on different nodes
                pipe.execute()
            except _RedisError as exc:
                self._fail(exc)
        finally:
            r.close()

    def __enter__(self) -> "RedisDict":
        """Return self; the with block closes this handle (it does not unlink)."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close this handle."""
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[str, str, bool, dict]]:
        """Pickle as a handle: the receiving process connects to the same dict."""
        if self._r is None:
            raise SharedDictClosedError(f"RedisDict {self._name!r} is closed and cannot be pickled")
        return (_attach, (self._url, self._name, self._allow_pickle, self._options))

    # -- statistics and sizing -------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """Entry count and sizes: every key and value is measured (HSCAN)."""
        entries = key_bytes = value_bytes = 0
        r = self._client()
        for s in self._shards:
            cursor: Any = 0
            while True:
                try:
                    cursor, page = r.hscan(s.hash, cursor, count=BATCH)
                except _RedisError as exc:
                    self._fail(exc)
                for field, data in page.items():
                    entries += 1
                    key_bytes += len(field)
                    value_bytes += len(data)
                if not cursor:
                    break
        memory = 0
        try:
            for s in self._shards:
                memory += int(r.memory_usage(s.hash) or 0) + int(r.memory_usage(s.ver) or 0)
        except _RedisError:
            memory = -1  # MEMORY USAGE may be disabled (rename-command); not an error
        return {
            "total_entries": entries,
            "sample_size": entries,
            "avg_key_utf8_bytes": key_bytes / entries if entries else 0.0,
            "avg_value_pickle_bytes": value_bytes / entries if entries else 0.0,
            "estimated_data_bytes": key_bytes + value_bytes,
            "segment_name": self._name,
            "backend": "redis",
            "url": self._safe,
            "hash_keys": [s.hash.decode() for s in self._shards],
            "max_keys": self._max_keys,
            "shards": self._nshards,
            "memory_bytes": memory,
            "entries": entries,
        }

    def recommend_sizing(self, target_entries: Optional[int] = None) -> dict[str, Any]:
        """Server memory, max_keys and shards for target_entries entries like
        the current ones (default: max_keys)."""
        stats = self.get_stats()
        if target_entries is None:
            target_entries = max(self._max_keys, stats["total_entries"], 1)
        if isinstance(target_entries, bool) or not isinstance(target_entries, int):
            raise TypeError("target_entries must be an int")
        if target_entries < 1:
            raise ValueError(f"target_entries must be at least 1, got {target_entries}")
        n = stats["total_entries"]
        if n and stats["memory_bytes"] > 0:
            per_entry = stats["memory_bytes"] / n
        else:  # no data to measure: keys, value and version, plus Redis overhead
            per_entry = 128.0
        total = math.ceil(target_entries * per_entry * 1.25)
        # One shard per ~1 GiB of data keeps each hash (and each cluster slot) moderate.
        shards = max(1, math.ceil(total / (1 << 30)))
        return {
            "current_stats": stats,
            "target_entries": target_entries,
            "sizing_recommendation": {
                "total_segment_size": total,
                "max_keys": target_entries,
                "bytes_per_entry": math.ceil(per_entry),
                "current_max_keys": self._max_keys,
            },
            "lock_recommendation": {
                "shards": shards,
                "current_shards": self._nshards,
                "reason": (
                    "total_segment_size is the Redis memory the entries would take (make sure "
                    "maxmemory allows it); shards spreads a large dict over cluster nodes, at "
                    "the cost of keys_atomic() and len() being per shard"
                ),
            },
        }


def _lock_key(name: str, kind: str, lock: str) -> bytes:
    return f"{KEY_PREFIX}{{{name}}}:{kind}:{lock}".encode()


class RedisLock:
    """A cross-process lock kept in Redis, with a lease.

    The holder's token sits in ``sharedbox:{name}:lock:<lock>`` with an
    expiry of ``lease`` seconds, renewed every lease/3 by a thread of the
    holding process.  If the holder dies, the lease runs out and the next
    acquirer gets the lock with ``recovered`` True.  If the holder merely
    stalls for longer than the lease (stopped, swapped, cut off from the
    server), another process may take the lock: release() then raises.
    """

    def __init__(self, d: RedisDict, name: str, lease: float):
        if not isinstance(name, str) or not name:
            raise TypeError("a lock name must be a non-empty str")
        lease = _check_timeout("lease", lease, allow_none=False)  # type: ignore[assignment]
        if lease < 0.1:
            raise ValueError(f"lease must be at least 0.1 s, got {lease}")
        self._d, self._name, self._lease = d, name, lease
        self._key = _lock_key(d.name, "lock", name)
        self._owner = _lock_key(d.name, "owner", name)
        self._chan = _lock_key(d.name, "l", name)
        self._token: Optional[bytes] = None
        self._stop: Optional[threading.Event] = None
        self.recovered = False
        """True if the last acquire() took the lock from a holder that died."""

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._name

    def _try(self, token: bytes) -> int:
        d = self._d
        try:
            return int(d._lock_acquire(
                keys=[self._key, self._owner, d._locks_key],
                args=[token, int(self._lease * 1000), self._name],
                client=d._client(),
            ))
        except _RedisError as exc:
            d._fail(exc)

    def acquire(self, timeout: Optional[float] = None) -> bool:
        """Take the lock, waiting at most timeout seconds (None: forever,
        0: do not wait).  Returns whether it was taken."""
        if self._token is not None:
            raise RuntimeError(f"lock {self._name!r} is already held by this handle")
        timeout = _check_timeout("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        token = uuid.uuid4().hex.encode()
        got = self._try(token)
        if got <= 0 and timeout != 0:
            d = self._d
            try:
                pubsub, receive = d._subscribe(self._chan)
            except _RedisError as exc:
                d._fail(exc)
            try:
                while True:
                    got = self._try(token)  # again, now that a release would be heard
                    if got > 0:
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    # Wake on a release, or when the holder's lease runs out.
                    pause = max(-got / 1000.0, 0.001)
                    pause = min(pause, WAIT_GUARD_SECONDS) if left is None else min(pause, left)
                    try:
                        receive(pause)
                    except _RedisError as exc:
                        d._fail(exc)
            finally:
                pubsub.close()
        if got <= 0:
            return False
        self._token = token
        self.recovered = got == 2
        self._start_renewing(token)
        return True

    def _start_renewing(self, token: bytes) -> None:
        stop = self._stop = threading.Event()
        d, key, lease_ms = self._d, self._key, int(self._lease * 1000)

        def renew() -> None:
            while not stop.wait(self._lease / 3):
                try:
                    if not d._lock_renew(keys=[key], args=[token, lease_ms], client=d._client()):
                        return  # lost (expired and taken): release() will say so
                except SharedDictClosedError:
                    return
                except Exception:
                    continue  # server unreachable for now: try again next period

        threading.Thread(target=renew, name=f"sharedbox-lease-{self._name}", daemon=True).start()

    def release(self) -> None:
        """Give the lock back.  RuntimeError if this handle does not hold it,
        or if its lease ran out and another process took it meanwhile."""
        token = self._token
        if token is None:
            raise RuntimeError(f"lock {self._name!r} is not held by this handle")
        self._token = None
        if self._stop is not None:
            self._stop.set()
        d = self._d
        try:
            ok = d._lock_release(
                keys=[self._key, self._owner],
                args=[token, d._publish, self._chan],
                client=d._client(),
            )
        except _RedisError as exc:
            d._fail(exc)
        if not ok:
            raise RuntimeError(
                f"lock {self._name!r} was no longer held when released: its lease "
                f"({self._lease} s) ran out, so another process may have held it meanwhile"
            )

    def locked(self) -> bool:
        """Whether some process holds the lock now."""
        d = self._d
        try:
            return bool(d._client().exists(self._key))
        except _RedisError as exc:
            d._fail(exc)

    def __enter__(self) -> "RedisLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self._token is not None else "not held"
        return f"<RedisLock {self._name!r} of {self._d.name!r}: {state} by this handle>"
