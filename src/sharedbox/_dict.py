"""SharedDict: the Python face of the native engine.

The hot operations (``d[k]``, ``d[k] = v``, ``del d[k]``, ``k in d``,
``len(d)``, ``get``) are native type slots inherited from
``_core.SharedDictCore``; this module adds what is naturally Python: the
constructor's argument checks, views, the rest of ``MutableMapping``, stats and
sizing advice, pickling as a handle, temporary dicts, and the context manager.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
import weakref
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView
from itertools import chain
from operator import itemgetter
from typing import Any, Iterator, Optional

from . import _codec, _core, _zerocopy
from ._lock import SharedLock, _check_timeout
from ._sentinel import MISSING
from .errors import (
    TooManyLocksError,
    TooManyViewsError,
    CorruptSegmentError,
    IncompatibleSegmentError,
    InsufficientSharedMemoryError,
    PickleRefusedError,
    SegmentFullError,
    SegmentMismatchError,
    SegmentMismatchWarning,
    SegmentNotFoundError,
    SegmentNotReadyError,
    SegmentReplacedError,
    SharedDictClosedError,
    SharedDictOpenError,
    TooManyKeysError,
    ValueTooLargeError,
)

__all__ = ["SharedDict", "DEFAULT_SIZE", "DEFAULT_MAX_KEYS"]

DEFAULT_SIZE = 128 * 1024 * 1024
DEFAULT_MAX_KEYS = 128
# The engine counts the attach deadline in nanoseconds of a 64-bit clock, so
# longer waits (math.inf included) are cut to this: about three years.
_MAX_ATTACH_TIMEOUT = 1e8
# The default stripe count shrinks for small segments until the stripes (256
# bytes each) take at most this fraction of the segment.
_STRIPES_SHARE = 4


class _NoDefault:
    """pop()'s marker for "no default given"; reads well in help()."""

    def __repr__(self) -> str:
        return "<no default>"


_MISSING: Any = _NoDefault()


class _Default(int):
    """A constructor default: equal to the specified value and shown as written
    in help() (``0o600``, not ``384``), and an object of its own, so that
    __init__ can tell "left at the default" from the same value passed on
    purpose (only passed values are compared with an existing segment)."""

    def __new__(cls, value: int, text: str) -> _Default:
        self = super().__new__(cls, value)
        self._text = text
        return self

    def __repr__(self) -> str:
        return self._text


_SIZE_DEFAULT = _Default(DEFAULT_SIZE, "128 * 1024 * 1024")
_MAX_KEYS_DEFAULT = _Default(DEFAULT_MAX_KEYS, "128")
_MODE_DEFAULT = _Default(0o600, "0o600")

class _VersionNow:
    """wait()'s default version: the key's version at the time of the call
    (None already means "absent")."""

    def __repr__(self) -> str:
        return "<the version now>"


_CURRENT: Any = _VersionNow()
# wait() sleeps in slices this long, to notice close() from another thread and
# unlink(); a signal (Ctrl-C) ends a slice at once.  Each slice costs about
# 0.1 ms of CPU (the wake and the check that the name still holds this dict).
_WAIT_SLICE_S = 1.0

_core._set_error_types(
    {
        "TooManyLocks": TooManyLocksError,
        "TooManyViews": TooManyViewsError,
        "NotFound": SegmentNotFoundError,
        "NoSpaceOnDevice": InsufficientSharedMemoryError,
        "Incompatible": IncompatibleSegmentError,
        "NotReady": SegmentNotReadyError,
        "SegmentFull": SegmentFullError,
        "ValueTooLarge": ValueTooLargeError,
        "TooManyKeys": TooManyKeysError,
        "Corrupt": CorruptSegmentError,
        "Closed": SharedDictClosedError,
        "PickleRefused": PickleRefusedError,
    }
)
_core._set_codec(
    _codec.dumps, _codec.loads, _codec.array_header, _codec.array_new, _codec.dtype_of_descr
)


def _check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"segment name {name!r} cannot be encoded as UTF-8 (it contains a lone surrogate)"
        ) from None


def _default_stripes(size: int, max_keys: int) -> int:
    """The engine's default for max_keys, halved while the stripes would take
    more than a quarter of a segment of `size` bytes (64 KiB cannot hold 256)."""
    stripes = _core.default_stripes(max_keys)
    while stripes > 1 and stripes * _core.STRIPE_BYTES * _STRIPES_SHARE > size:
        stripes //= 2
    return stripes


def _initial_items(data: Any) -> list[tuple[str, Any]]:
    """`data` as (key, value) pairs, checked before any segment is created.

    Accepts what dict(data) accepts: a mapping, an object with keys(), or an
    iterable of pairs."""
    if data is None:
        return []
    if isinstance(data, Mapping):
        pairs = list(data.items())
    elif hasattr(data, "keys"):
        pairs = [(key, data[key]) for key in data.keys()]
    else:
        what = "data must be a mapping or an iterable of (key, value) pairs"
        try:
            items = iter(data)
        except TypeError:
            raise TypeError(f"{what}, not {type(data).__name__}") from None
        pairs = []
        for i, item in enumerate(items):
            try:
                key, value = item
            except (TypeError, ValueError):
                raise TypeError(f"{what}; item {i} is {item!r:.60}") from None
            pairs.append((key, value))
    for key, _ in pairs:
        if not isinstance(key, str):
            raise TypeError(
                f"SharedDict keys must be str, not {type(key).__name__} (key {key!r:.60} in data)"
            )
    return pairs


def _attach(
    name: str, allow_pickle: bool = True, identity: Optional[tuple[int, int]] = None
) -> "SharedDict":
    """Unpickles a handle: attaches by name, and (given the sender's segment
    identity) refuses a segment that has replaced the sender's under that name."""
    d = SharedDict(name, create=False, allow_pickle=allow_pickle)
    if identity is not None and tuple(identity) != d._identity:
        d.close()
        raise SegmentReplacedError(
            f"the SharedDict {name!r} that was sent has been unlinked; the name now "
            "belongs to another segment"
        )
    return d


def _unlink_temporary(name: str, identity: tuple[int, int], owner_pid: int) -> None:
    """Removes a temporary() dict's segment: only in the process that created
    it (a forked child inherits this finalizer, not the segment), and only if
    the name still refers to that segment."""
    if os.getpid() != owner_pid:
        return
    try:
        if _core._name_state(name, *identity) == "current":
            _core.unlink_segment(name)
    except OSError:  # removed meanwhile (sharedbox rm, another handle's unlink)
        pass


class _Keys(KeysView):
    def __iter__(self) -> Iterator[str]:
        return self._mapping._iter_keys()


class _Items(ItemsView):
    def __iter__(self):
        # A stripe at a time: its items copied under its lock, decoded after.
        # Chained in C (no Python frame per item: a third of the time).
        mapping = self._mapping
        return chain.from_iterable(map(mapping._stripe_items, range(mapping.stripes)))

    def __contains__(self, item) -> bool:
        key, value = item
        found = self._mapping.get(key, _MISSING)
        return found is not _MISSING and (found is value or found == value)


class _Values(ValuesView):
    def __iter__(self):
        mapping = self._mapping
        items = chain.from_iterable(map(mapping._stripe_items, range(mapping.stripes)))
        return map(itemgetter(1), items)


class SharedDict(_core.SharedDictCore):
    """A dict of str keys in a named POSIX shared-memory segment.

    ``SharedDict(name, data=None, *, size=128 MiB, create=True, max_keys=128)``
    creates the segment ``name`` or, if it exists, attaches to it (its own size
    and max_keys then apply); ``create=False`` only attaches.  Any number of
    processes may read and write it at once.  Values are copied in and out.

    Extra keyword-only options: ``stripes`` (lock stripes; a power of two,
    default derived from max_keys and size), ``mode`` (permission bits of a new
    segment, default 0o600 owner-only), ``attach_timeout`` (accepted for
    compatibility: a segment gets its name only once it is complete, so
    attaching never waits), ``allow_pickle`` (False: refuse to store or load values
    that need pickle, because anyone who can write the segment can make an
    unpickling reader run code), ``strict`` (True: raise SegmentMismatchError
    instead of warning when an existing segment differs from the size,
    max_keys, stripes or mode passed).

    ``SharedDict.temporary()`` makes a dict under a fresh unique name that is
    removed when its handle is closed or the process exits.
    """

    __hash__ = None  # type: ignore[assignment]  # mutable mapping

    def __init__(
        self,
        name: str,
        data: Optional[Mapping[str, Any]] = None,
        *,
        size: int = _SIZE_DEFAULT,
        create: bool = True,
        max_keys: int = _MAX_KEYS_DEFAULT,
        stripes: Optional[int] = None,
        mode: int = _MODE_DEFAULT,
        attach_timeout: float = 5.0,
        allow_pickle: bool = True,
        strict: bool = False,
    ) -> None:
        """Create the segment ``name`` (or attach to it) and store ``data`` in it.

        ``data`` is a mapping or an iterable of (key, value) pairs.
        ``size``, ``max_keys``, ``stripes`` and ``mode`` apply only when this
        call creates the segment.  When it attaches instead, each of them that
        was passed and differs from the segment's gives a
        SegmentMismatchWarning (SegmentMismatchError with ``strict=True``).
        If storing ``data`` fails, a segment this call created is removed
        again.  See the class docstring for the other options.

        Raises SegmentNotFoundError (create=False and no such segment),
        InsufficientSharedMemoryError (``/dev/shm`` has less free space than
        ``size``), IncompatibleSegmentError (not a sharedbox segment),
        SegmentNotReadyError (its creator died while initialising it),
        SegmentMismatchError (strict=True), PermissionError, TypeError or
        ValueError (bad arguments, a non-str key or an unpicklable value in
        ``data``), TooManyKeysError or SegmentFullError (``data`` does not fit).
        """
        _check_name(name)
        _check_int("size", size, 1, _core.MAX_SEGMENT_BYTES)
        _check_int("max_keys", max_keys, 1, _core.MAX_KEYS)
        if stripes is not None:
            _check_int("stripes", stripes, 1, _core.MAX_STRIPES)
            if stripes & (stripes - 1):
                raise ValueError(f"stripes must be a power of two, got {stripes}")
        _check_int("mode", mode, 0, 0o777)
        for flag, value in (("create", create), ("allow_pickle", allow_pickle),
                            ("strict", strict)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be a bool, not {type(value).__name__}")
        if isinstance(attach_timeout, bool) or not isinstance(attach_timeout, (int, float)):
            raise TypeError("attach_timeout must be a number of seconds")
        if not attach_timeout >= 0:  # also refuses NaN
            raise ValueError(
                f"attach_timeout must be a number of seconds >= 0 (math.inf: no limit), "
                f"got {attach_timeout}"
            )
        timeout = float(min(attach_timeout, _MAX_ATTACH_TIMEOUT))
        items = _initial_items(data)  # checked before a segment exists
        super().__init__(
            name, create, int(size), int(max_keys),
            stripes or _default_stripes(size, max_keys), int(mode), timeout, allow_pickle,
        )
        try:
            if not self.created:
                self._compare_parameters(size, max_keys, stripes, mode, strict)
            for key, value in items:
                self[key] = value
        except BaseException:
            self._abandon()
            raise

    def _compare_parameters(
        self, size: int, max_keys: int, stripes: Optional[int], mode: int, strict: bool
    ) -> None:
        """Warns (or with strict, raises) about each creation parameter that
        was passed and differs from the existing segment's."""
        page = _core.PAGE_BYTES
        asked = []
        if size is not _SIZE_DEFAULT:  # the engine rounds sizes up to whole pages
            asked.append(("size", -(-size // page) * page, self.segment_size, str))
        if max_keys is not _MAX_KEYS_DEFAULT:
            asked.append(("max_keys", max_keys, self.max_keys, str))
        if stripes is not None:
            asked.append(("stripes", stripes, self.stripes, str))
        if mode is not _MODE_DEFAULT:
            asked.append(("mode", mode, self.mode, oct))
        differ = [
            f"{what}={show(want)} (it has {show(have)})"
            for what, want, have, show in asked
            if want != have
        ]
        if not differ:
            return
        text = (
            f"SharedDict {self.name!r} already exists and differs from this call: "
            f"{', '.join(differ)}; these arguments apply only when a call creates the segment"
        )
        if strict:
            raise SegmentMismatchError(text)
        warnings.warn(
            text + " (pass strict=True to make this an error)", SegmentMismatchWarning,
            stacklevel=3,
        )

    def _abandon(self) -> None:
        """After a failed __init__: close, and remove the segment if this call
        created it (nobody else has been told its name yet)."""
        created = self.created
        self.close()
        if created and self._name_state() == "current":
            try:
                _core.unlink_segment(self.name)
            except FileNotFoundError:
                pass

    @classmethod
    def temporary(
        cls,
        data: Optional[Mapping[str, Any]] = None,
        *,
        size: int = _SIZE_DEFAULT,
        max_keys: int = _MAX_KEYS_DEFAULT,
        stripes: Optional[int] = None,
        mode: int = _MODE_DEFAULT,
        allow_pickle: bool = True,
        prefix: str = "sbx_tmp",
    ) -> SharedDict:
        """A new SharedDict under a fresh unique name, removed when this handle
        is closed (also by a ``with`` block), garbage-collected, or at exit.

        The name is ``{prefix}_{pid}_{random}`` (``d.name``); other processes
        attach to it by name or receive the handle through multiprocessing,
        and their handles are ordinary ones: only this handle, in this
        process, removes the segment.  A process killed by a signal cannot
        remove it: ``sharedbox list`` shows the creator's PID.
        """
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        items = _initial_items(data)
        while True:
            name = f"{prefix}_{os.getpid()}_{secrets.token_hex(8)}"
            d = cls(name, size=size, max_keys=max_keys, stripes=stripes, mode=mode,
                    allow_pickle=allow_pickle)
            if d.created:
                break
            d.close()  # the name was taken (never seen in practice): leave it alone
        # The finalizer holds the name and identity, not the handle: it runs
        # on close(), when the handle is collected, or at interpreter exit.
        d.__dict__["_temporary"] = weakref.finalize(
            d, _unlink_temporary, name, d._identity, os.getpid()
        )
        try:
            for key, value in items:
                d[key] = value
        except BaseException:
            d.close()
            raise
        return d

    # -- mapping protocol beyond the native slots ---------------------------

    def __iter__(self) -> Iterator[str]:
        """Iterate over the keys present when iteration starts (a list taken
        stripe by stripe, not a snapshot: see keys_atomic())."""
        return self._iter_keys()

    def keys(self) -> KeysView[str]:
        """A view of the keys; iterating it lists them stripe by stripe."""
        return _Keys(self)

    def items(self) -> ItemsView[str, Any]:
        """A view of (key, value) pairs; keys deleted meanwhile are skipped."""
        return _Items(self)

    def values(self) -> ValuesView[Any]:
        """A view of the values; keys deleted meanwhile are skipped."""
        return _Values(self)

    def keys_atomic(self) -> list[str]:
        """The keys at one instant: every stripe is locked while they are listed."""
        return self._keys(True)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove key and return its value (atomically); default if absent, else KeyError.

        Also raises TypeError (key not a str) and the errors of d[key]."""
        value = self._pop(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    def popitem(self) -> tuple[str, Any]:
        """Remove and return some (key, value) pair; KeyError if empty."""
        for key in self._keys(False):
            value = self._pop(key, _MISSING)
            if value is not _MISSING:
                return key, value
        raise KeyError("popitem(): SharedDict is empty")

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return d[key], first storing default if key is absent (atomically)."""
        while True:
            if self._put_if_absent(key, default):
                return default
            value = self.get(key, _MISSING)
            if value is not _MISSING:
                return value
            # deleted between the two steps: try again

    def clear(self) -> None:
        """Remove every key (each removal is atomic; concurrent inserts may survive)."""
        for key in self._keys(False):
            self._discard(key)

    update = MutableMapping.update

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __repr__(self) -> str:
        try:
            closed = self.is_closed()
        except TypeError:  # __init__ never ran (a subclass forgot super().__init__())
            return f"<{type(self).__name__} (not initialised)>"
        if closed:
            return f"<SharedDict {self.name!r} (closed)>"
        return (
            f"<SharedDict {self.name!r}: {len(self)} of {self.max_keys} keys, "
            f"{self.segment_size} bytes>"
        )

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Unmap the segment from this handle; the data stays for other
        processes.  Calling it again does nothing.  A dict made by
        temporary() is also unlinked (by its creating process only)."""
        super().close()
        finalizer = self.__dict__.get("_temporary")
        if finalizer is not None:
            finalizer()

    def unlink(self) -> None:
        """Remove the segment's name; call close() first.  Other processes'
        mappings stay valid until they close; the memory is freed then.

        Removes only the segment this handle opened: raises
        SharedDictOpenError (a RuntimeError) if the handle is still open,
        SegmentNotFoundError if the name is gone (already unlinked), and
        SegmentReplacedError if the name now belongs to another segment (see
        is_current()).  Call it in one process, usually the creator (see
        ``created``)."""
        if not self.is_closed():
            raise SharedDictOpenError(
                f"SharedDict {self.name!r} is still open: call close() before unlink()"
            )
        if self._name_state() == "replaced":
            raise SegmentReplacedError(
                f"not unlinking {self.name!r}: the name now belongs to another segment "
                "(the one this handle opened was unlinked, and the name reused)"
            )
        _core.unlink_segment(self.name)  # SegmentNotFoundError if it is gone

    def is_current(self) -> bool:
        """True while the name still refers to this handle's segment; False
        once that segment has been unlinked (by anyone), even if a new segment
        now has the name.  Also works on a closed handle."""
        return self._name_state() == "current"

    def _name_state(self) -> str:
        return _core._name_state(self.name, *self._identity)

    def __enter__(self) -> SharedDict:
        """Return self; the with block closes this handle (it does not unlink)."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close this handle."""
        self.close()

    def __copy__(self) -> SharedDict:
        """Refused with TypeError: a copy would share the data (use dict(d))."""
        raise TypeError(_NO_COPY)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedDict:
        """Refused with TypeError: a copy would share the data (use dict(d))."""
        raise TypeError(_NO_COPY)

    def __reduce__(self) -> tuple[Any, tuple[str, bool, tuple[int, int]]]:
        """Pickle as a handle: the receiving process attaches by name."""
        # A SharedDict crosses process boundaries as its name: the receiver
        # attaches to the same segment (multiprocessing spawn, Pool, queues).
        if self.is_closed():
            raise SharedDictClosedError(f"SharedDict {self.name!r} is closed and cannot be pickled")
        return (_attach, (self.name, self.allow_pickle, self._identity))

    # -- coordination -------------------------------------------------------

    def incr(self, key: str, delta: Any = 1) -> Any:
        """Add ``delta`` to the number stored at ``key`` and return the result,
        atomically (under the key's stripe lock, crash-safe like any write).

        A missing key counts as 0.  int + int stays a 64-bit int:
        ``OverflowError`` past it, with the dict unchanged.  A float on either
        side gives a float.  A stored value or a delta that is not an int or a
        float (bool included) raises ``TypeError``.
        """
        if type(delta) is int or type(delta) is float:  # the common case, first
            return self._incr(key, delta)
        if isinstance(delta, bool):
            raise TypeError("incr() delta must be an int or a float, not bool")
        if type(delta) is not int and isinstance(delta, int):
            delta = int(delta)  # an IntEnum or other int subclass counts as its value
        elif type(delta) is not float and isinstance(delta, float):
            delta = float(delta)
        return self._incr(key, delta)

    def compare_and_set(self, key: str, expected: Any, new: Any) -> bool:
        """Store ``new`` at ``key`` only if it holds ``expected`` now; return
        whether it stored, atomically.

        The comparison is on the stored encoding: the exact type and content,
        so 1, 1.0 and True all differ; arrays compare by dtype, shape and
        bytes; pickled values by their pickle bytes.  ``expected=MISSING``
        (``sharedbox.MISSING``) means "only if the key is absent".
        """
        missing = expected is MISSING
        return self._compare_and_set(key, None if missing else expected, missing, new)

    def version(self, key: str) -> Optional[int]:
        """An int that changes on every write or delete of ``key`` (and is
        never reused in this segment's life); None while the key is absent."""
        return self._version(key)

    def wait(self, key: str, version: Any = _CURRENT, timeout: Optional[float] = None) -> Optional[int]:
        """Block until ``key``'s version differs from ``version`` and return
        the new version (None: the key is now absent).

        ``version`` is what you last saw from ``d.version(key)`` (None:
        absent), so ``v = d.version(k); ...read...; d.wait(k, v)`` never misses
        a change.  Left out, it is the version at the time of the call.
        ``TimeoutError`` after ``timeout`` seconds.  The wait sleeps on a futex
        in the segment (no polling), releases the GIL, and can be interrupted
        by Ctrl-C.  Raises ``SharedDictClosedError`` if the handle is closed
        (noticed within a second when another thread closes it), and
        ``SegmentNotFoundError``/``SegmentReplacedError`` if the segment is
        unlinked while waiting.
        """
        return self._wait(key, version, timeout, None)

    async def wait_async(
        self, key: str, version: Any = _CURRENT, timeout: Optional[float] = None
    ) -> Optional[int]:
        """``wait()`` for asyncio: it waits in a worker thread, so the event
        loop goes on; cancelling it ends that thread within a second."""
        import asyncio
        import threading

        if version is _CURRENT:
            version = self.version(key)
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._wait, key, version, timeout, cancelled)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def _wait(self, key: str, version: Any, timeout: Optional[float], cancelled: Any) -> Optional[int]:
        import time

        timeout = _check_timeout(timeout)
        if version is _CURRENT:
            version = self.version(key)
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise TypeError("version must be an int from d.version(key), or None")
        seen = 0 if version is None else version
        if not 0 <= seen < 2**64:
            raise ValueError(f"version {version} is not one d.version() returns")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _WAIT_SLICE_S if deadline is None else min(_WAIT_SLICE_S, deadline - time.monotonic())
            changed, now = self._wait_slice(key, seen, max(left, 0.0))
            if changed:
                return now
            if cancelled is not None and cancelled.is_set():
                raise TimeoutError("wait_async() was cancelled")
            state = self._name_state()
            if state != "current":
                raise (SegmentNotFoundError if state == "missing" else SegmentReplacedError)(
                    f"SharedDict {self.name!r} was unlinked while waiting for {key!r}"
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{key!r} did not change within {timeout} s")

    # -- zero-copy -------------------------------------------------------------

    def create_array(
        self, key: str, shape: Any, dtype: Any, order: str = "C"
    ) -> _zerocopy.ArrayBuilder:
        """``with d.create_array(key, shape, dtype) as arr:`` fill ``arr``
        (a writable ndarray in the segment) in place; leaving the block
        normally publishes it as ``d[key]`` in one atomic step, without a
        copy.  An exception publishes nothing (the old value stays) and the
        block is freed once ``arr`` is gone.  After the block ``arr`` is
        read-only.  If a view of ``arr`` made inside the block (a slice, a
        memoryview, another name for it) is still alive when it ends, the
        value is published as a copy instead, so that no writable view of a
        published record can exist.

        Raises TypeError (object dtype, bad shape), ValueError (bad order),
        SegmentFullError, TooManyKeysError (at publication),
        TooManyViewsError, SharedDictClosedError.
        """
        return _zerocopy.ArrayBuilder(self, key, shape, dtype, order)

    def create_bytes(self, key: str, nbytes: int) -> _zerocopy.BytesBuilder:
        """``with d.create_bytes(key, nbytes) as mv:`` the bytes version of
        :meth:`create_array`: ``mv`` is a writable memoryview of ``nbytes``
        bytes in the segment, published as ``d[key]`` (bytes) at the end of
        the block and released then."""
        return _zerocopy.BytesBuilder(self, key, nbytes)

    def lock(self, name: str = "default") -> SharedLock:
        """A lock named ``name`` shared by every process of this dict (see
        :class:`sharedbox.SharedLock`): for read-modify-write in Python code.
        A segment holds at most 32 names (``TooManyLocksError`` beyond), each
        at most 43 UTF-8 bytes."""
        return SharedLock(self, name)

    # -- statistics and sizing ----------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Entry counts, sizes and space use, as a dict with these keys:

        total_entries, entries: keys stored now (the same number);
        sample_size: entries measured (all of them, so = total_entries);
        avg_key_utf8_bytes, avg_value_pickle_bytes: average key length in
        UTF-8 and average stored value length (pickle only for values without
        a native encoding); estimated_data_bytes: all keys plus all values;
        segment_name, segment_size, max_keys, stripes: the creation parameters;
        bytes_used, bytes_free: the heap's used and free bytes (records and
        index tables); largest_free_block: the largest record that fits now;
        record_bytes, index_bytes: the parts of bytes_used taken by records
        and by the index; recoveries: repairs made after a process died
        holding a lock (or holding views); pins: zero-copy pins held now, in
        every process (one per record per process: ``view``,
        ``create_array``); pinned_bytes: memory kept only by pins (records
        replaced or deleted while viewed, and blocks being built);
        pin_holders: {pid: pins} of the processes holding them;
        max_pins_per_process.  Pins of processes that died are freed first.

        Raises SharedDictClosedError.  Takes the allocator lock briefly."""
        return self._summarise(self._stats())

    def _summarise(self, raw: dict) -> dict:
        n = raw["entries"]
        return {
            "total_entries": n,
            "sample_size": n,
            "avg_key_utf8_bytes": raw["key_bytes"] / n if n else 0.0,
            "avg_value_pickle_bytes": raw["value_bytes"] / n if n else 0.0,
            "estimated_data_bytes": raw["key_bytes"] + raw["value_bytes"],
            "segment_name": self.name,
            "segment_size": raw["segment_bytes"],
            "bytes_used": raw["used_bytes"],
            "bytes_free": raw["free_bytes"],
            "largest_free_block": raw["largest_free_bytes"],
            "index_bytes": raw["table_bytes"],
            "record_bytes": raw["record_bytes"],
            "max_keys": raw["max_keys"],
            "stripes": raw["stripes"],
            "entries": n,
            "recoveries": raw["recoveries"],
            "pins": raw["pins"],
            "pinned_bytes": raw["pinned_bytes"],
            "pin_holders": raw["pin_holders"],
            "max_pins_per_process": raw["max_pins_per_process"],
        }

    def recommend_sizing(self, target_entries: Optional[int] = None) -> dict[str, Any]:
        """Segment size, max_keys and stripes for target_entries entries like
        the current ones (default: max_keys).  A SharedDict created with
        ``size=...['sizing_recommendation']['total_segment_size']`` and
        ``max_keys=target_entries`` holds that many such entries.

        Returns a dict: current_stats (get_stats()); target_entries;
        sizing_recommendation: total_segment_size (bytes, a page multiple),
        max_keys (= target_entries), bytes_per_entry (measured),
        current_segment_size, current_max_keys; lock_recommendation: stripes,
        current_stripes, default_stripes, reason (a sentence).

        Raises TypeError or ValueError (target_entries not an int >= 1),
        SharedDictClosedError."""
        raw = self._stats()  # one scan serves both the summary and the sizing
        stats = self._summarise(raw)
        if target_entries is None:
            target_entries = max(self.max_keys, stats["total_entries"], 1)
        _check_int("target_entries", target_entries, 1)
        n = stats["total_entries"]
        # What one entry really occupies: its record, rounded to 64-byte units.
        record_bytes = raw["record_bytes"] / n if n else 128.0
        cpus = os.cpu_count() or 1
        stripes = _recommended_stripes(target_entries, cpus)
        default = _core.default_stripes(target_entries)
        size = _segment_size_for(target_entries, record_bytes, max(stripes, default))
        return {
            "current_stats": stats,
            "target_entries": target_entries,
            "sizing_recommendation": {
                "total_segment_size": size,
                "max_keys": target_entries,
                "bytes_per_entry": math.ceil(record_bytes),
                "current_segment_size": self.segment_size,
                "current_max_keys": self.max_keys,
            },
            "lock_recommendation": {
                "stripes": stripes,
                "current_stripes": self.stripes,
                "default_stripes": default,
                "reason": (
                    f"{stripes} stripes keep writers on {cpus} CPUs from meeting on one "
                    "lock; pass stripes=... when creating the SharedDict (reads take no lock)"
                ),
            },
        }


MutableMapping.register(SharedDict)

_NO_COPY = (
    "a SharedDict cannot be copied: a copy would be a second handle on the same shared "
    "data, not an independent dict.  Use dict(d) for a private snapshot of the contents, "
    "or SharedDict(d.name, create=False) for another handle"
)


def _recommended_stripes(entries: int, cpus: int) -> int:
    # Enough stripes that concurrent writers (about one per CPU) rarely share
    # one: 8 per CPU, at least the default, at most one per key.
    want = max(8 * cpus, _core.default_stripes(entries))
    want = min(want, 4096, max(1, entries))
    stripes = 1
    while stripes < want:
        stripes <<= 1
    return min(stripes, 4096)


def _segment_size_for(entries: int, record_bytes: float, stripes: int) -> int:
    """The smallest page-multiple size whose heap fits `entries` records of
    `record_bytes` plus the index tables, with margins for growth and
    fragmentation."""
    # Index: each stripe's table keeps live keys under 1/2 of its slots (8 B
    # each); while growing, the old and new tables coexist.  Keys spread
    # unevenly, so size each stripe for 1.5x its share.
    per_stripe = math.ceil(entries / stripes * 1.5) + 1
    slots = 16
    while slots < 2 * per_stripe:
        slots <<= 1
    tables = stripes * slots * 8 * 2
    heap_needed = math.ceil(entries * record_bytes * 1.10) + tables + 64 * 1024
    size = heap_needed + 4096 * 4 + stripes * 256 + heap_needed // 500
    while _core.heap_bytes_for(size, stripes) < heap_needed:
        size += max(4096, (heap_needed - _core.heap_bytes_for(size, stripes)))
    return (size + 4095) // 4096 * 4096
