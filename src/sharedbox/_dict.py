"""SharedDict: the Python face of the native engine.

The hot operations (``d[k]``, ``d[k] = v``, ``del d[k]``, ``k in d``,
``len(d)``, ``get``) are native type slots inherited from
``_core.SharedDictCore``; this module adds what is naturally Python: the
constructor's argument checks, views, the rest of ``MutableMapping``, stats and
sizing advice, pickling as a handle, and the context manager.
"""

from __future__ import annotations

import math
import os
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView
from typing import Any, Iterator, Optional

from . import _codec, _core
from .errors import (
    CorruptSegmentError,
    IncompatibleSegmentError,
    InsufficientSharedMemoryError,
    PickleRefusedError,
    SegmentFullError,
    SegmentNotFoundError,
    SegmentNotReadyError,
    SharedDictClosedError,
    TooManyKeysError,
    ValueTooLargeError,
)

__all__ = ["SharedDict", "DEFAULT_SIZE", "DEFAULT_MAX_KEYS"]

DEFAULT_SIZE = 128 * 1024 * 1024
DEFAULT_MAX_KEYS = 128
_MISSING: Any = object()

_core._set_error_types(
    {
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
_core._set_codec(_codec.dumps, _codec.loads, _codec.array_header, _codec.array_new)


def _check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _attach(name: str, allow_pickle: bool = True) -> "SharedDict":
    return SharedDict(name, create=False, allow_pickle=allow_pickle)


class _Keys(KeysView):
    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping._keys(False))


class _Items(ItemsView):
    def __iter__(self):
        mapping = self._mapping
        for key in mapping._keys(False):
            value = mapping.get(key, _MISSING)
            if value is not _MISSING:  # deleted since the key list was taken
                yield key, value

    def __contains__(self, item) -> bool:
        key, value = item
        found = self._mapping.get(key, _MISSING)
        return found is not _MISSING and (found is value or found == value)


class _Values(ValuesView):
    def __iter__(self):
        mapping = self._mapping
        for key in mapping._keys(False):
            value = mapping.get(key, _MISSING)
            if value is not _MISSING:
                yield value


class SharedDict(_core.SharedDictCore):
    """A dict of str keys in a named POSIX shared-memory segment.

    ``SharedDict(name, data=None, *, size=128 MiB, create=True, max_keys=128)``
    creates the segment ``name`` or, if it exists, attaches to it (its own size
    and max_keys then apply); ``create=False`` only attaches.  Any number of
    processes may read and write it at once.  Values are copied in and out.

    Extra keyword-only options: ``stripes`` (lock stripes; a power of two,
    default derived from max_keys), ``mode`` (permission bits of a new
    segment, default 0o600 owner-only), ``attach_timeout`` (seconds to wait
    for a concurrent creator to finish, default 5), ``allow_pickle`` (False:
    refuse to store or load values that need pickle, because anyone who can
    write the segment can make an unpickling reader run code).
    """

    __hash__ = None  # type: ignore[assignment]  # mutable mapping

    def __init__(
        self,
        name: str,
        data: Optional[Mapping[str, Any]] = None,
        *,
        size: int = DEFAULT_SIZE,
        create: bool = True,
        max_keys: int = DEFAULT_MAX_KEYS,
        stripes: Optional[int] = None,
        mode: int = 0o600,
        attach_timeout: float = 5.0,
        allow_pickle: bool = True,
    ) -> None:
        """Create the segment ``name`` (or attach to it) and store ``data`` in it.

        ``size`` and ``max_keys`` apply only when this call creates the
        segment; attaching uses the creator's.  See the class docstring for
        the other options.  Raises SegmentNotFoundError (create=False and no
        such segment), InsufficientSharedMemoryError (``/dev/shm`` has less
        free space than ``size``), IncompatibleSegmentError (not a sharedbox
        segment), ValueError or TypeError (bad arguments).
        """
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        _check_int("size", size, 1)
        _check_int("max_keys", max_keys, 1)
        if stripes is not None:
            _check_int("stripes", stripes, 1, 4096)
            if stripes & (stripes - 1):
                raise ValueError(f"stripes must be a power of two, got {stripes}")
        _check_int("mode", mode, 0, 0o777)
        if not isinstance(create, bool):
            raise TypeError(f"create must be a bool, not {type(create).__name__}")
        if isinstance(attach_timeout, bool) or not isinstance(attach_timeout, (int, float)):
            raise TypeError("attach_timeout must be a number of seconds")
        if not attach_timeout >= 0 or math.isinf(attach_timeout):
            raise ValueError(f"attach_timeout must be a finite number >= 0, got {attach_timeout}")
        if not isinstance(allow_pickle, bool):
            raise TypeError(f"allow_pickle must be a bool, not {type(allow_pickle).__name__}")
        super().__init__(
            name, create, size, max_keys, stripes or 0, mode, float(attach_timeout), allow_pickle
        )
        if data is not None:
            self.update(data)

    # -- mapping protocol beyond the native slots ---------------------------

    def __iter__(self) -> Iterator[str]:
        """Iterate over the keys present when iteration starts (a list taken
        stripe by stripe, not a snapshot: see keys_atomic())."""
        return iter(self._keys(False))

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
        """Remove key and return its value (atomically); default if absent, else KeyError."""
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
        if self.is_closed():
            return f"<SharedDict {self.name!r} (closed)>"
        return (
            f"<SharedDict {self.name!r}: {len(self)} of {self.max_keys} keys, "
            f"{self.segment_size} bytes>"
        )

    # -- lifecycle -----------------------------------------------------------

    def unlink(self) -> None:
        """Remove the segment's name; call close() first.  Other processes'
        mappings stay valid until they close; the memory is freed then."""
        if not self.is_closed():
            raise RuntimeError(
                f"SharedDict {self.name!r} is still open: call close() before unlink()"
            )
        _core.unlink_segment(self.name)

    def __enter__(self) -> SharedDict:
        """Return self; the with block closes this handle (it does not unlink)."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close this handle."""
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[str, bool]]:
        """Pickle as a handle: the receiving process attaches by name."""
        # A SharedDict crosses process boundaries as its name: the receiver
        # attaches to the same segment (multiprocessing spawn, Pool, queues).
        if self.is_closed():
            raise SharedDictClosedError(f"SharedDict {self.name!r} is closed and cannot be pickled")
        return (_attach, (self.name, self.allow_pickle))

    # -- statistics and sizing ----------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Entry counts, sizes and space use.  Every entry is measured (the
        record headers hold the sizes), so sample_size equals total_entries."""
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
        }

    def recommend_sizing(self, target_entries: Optional[int] = None) -> dict[str, Any]:
        """Segment size, max_keys and stripes for target_entries entries like
        the current ones (default: max_keys).  A SharedDict created with
        ``size=...['sizing_recommendation']['total_segment_size']`` and
        ``max_keys=target_entries`` holds that many such entries."""
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
