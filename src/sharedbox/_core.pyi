"""Native engine of sharedbox (use the sharedbox package, not this module).

Type stub for the nanobind extension built from src/binding/module.cpp.
tests/test_typing.py checks it against the compiled module: mypy's stubtest
for names and the slot methods, and nanobind's own signatures (parameter
names, kinds and defaults) for every function and method.  Types here are
narrower than nanobind's (``str`` keys where it says ``object | None``)
because the binding rejects anything else with TypeError.
"""

from collections.abc import Callable, Iterator
from typing import Any

from typing_extensions import disjoint_base

LAYOUT_VERSION: int
"""Version of the segment layout this build reads and writes."""

ALLOC_MUTEX_OFFSET: int
"""Byte offset of the allocator's robust mutex in the segment."""

STRIPE_BYTES: int
"""Size in bytes of one stripe record (lock plus table reference)."""

STRIPE_MUTEX_OFFSET: int
"""Byte offset of a stripe's mutex inside its stripe record."""

MUTEX_BYTES: int
"""sizeof(pthread_mutex_t) on this platform."""

PAGE_BYTES: int
"""Size of the segment header page; the stripe array starts here."""

SEGMENT_MAGIC: int
"""The first eight bytes of every sharedbox segment, as a little-endian integer."""

MAX_SEGMENT_BYTES: int
"""The largest segment size a SharedDict may be created with."""

MAX_KEYS: int
"""The largest max_keys a SharedDict may be created with."""

MAX_STRIPES: int
"""The largest stripe count."""

def _peek_header(data: bytes) -> dict[str, int | bool] | None: ...

def _set_error_types(arg: dict[str, type[BaseException]], /) -> None: ...
def _set_codec(
    arg0: Callable[[Any], bytes],
    arg1: Callable[[bytes], Any],
    arg2: Callable[[Any], Any],
    arg3: Callable[[bytes, tuple[int, ...], bool, int], Any],
    arg4: Callable[[bytes], Any],
    /,
) -> None: ...
def _refcounts(a: object, b: object) -> tuple[int, int]:
    """
    The reference counts of a and b (create_array's check that no view of its array outlives the with-block).
    """

@disjoint_base  # instances have a C layout: no second native base is possible
class PinnedBuffer:
    """
    Shared memory that a zero-copy view or a block being built keeps pinned; the base object of their arrays and memoryviews.
    """

    @property
    def exports(self) -> int:
        """Buffers exported from it now."""

    @property
    def writable(self) -> bool:
        """True while the block is being built (create_array)."""

    def _make_read_only(self) -> None:
        """Refuse writable buffers from now on (a block whose build was abandoned)."""
def default_stripes(max_keys: int) -> int:
    """The stripe count a SharedDict with this max_keys gets by default."""

def heap_bytes_for(size: int, stripes: int) -> int:
    """Bytes of a segment of this size left for records and index tables."""

def encode_value(value: object, allow_pickle: bool = True) -> bytes:
    """The bytes a SharedDict stores for value (canonical form: the same on every backend)."""

def decode_value(data: bytes, allow_pickle: bool) -> Any:
    """The value that encode_value turned into data."""

def validate_encoded(data: bytes, allow_pickle: bool) -> None:
    """Raise ValueError unless data is one well-formed encoded value (nothing is decoded)."""

def unlink_segment(name: str) -> None:
    """Removes the shared memory segment of this name."""

def _name_state(name: str, created_ns: int, seed: int) -> str:
    """
    'current', 'missing' or 'replaced': what the name refers to now, compared with the segment of this identity (a handle's _identity).
    """

@disjoint_base  # instances have a C layout: no second native base is possible
class SharedDictCore:
    def __init__(
        self,
        name: str,
        create: bool,
        size: int,
        max_keys: int,
        stripes: int,
        mode: int,
        attach_timeout: float,
        allow_pickle: bool,
    ) -> None: ...

    # Type slots (d[k], d[k] = v, del d[k], k in d, len(d)).
    def __len__(self, /) -> int: ...
    def __getitem__(self, key: str, /) -> Any: ...
    def __setitem__(self, key: str, value: Any, /) -> None: ...
    def __delitem__(self, key: str, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def get(self, key: str, default: Any = None) -> Any:
        """Return the value for key if key is present, else default."""

    def _put_if_absent(self, key: str, value: Any) -> bool: ...
    def _pop(self, key: str, default: Any) -> Any: ...
    def _discard(self, key: str) -> bool: ...
    def _keys(self, atomic: bool) -> list[str]: ...
    def _iter_keys(self) -> Iterator[str]: ...
    def _stats(self) -> dict[str, Any]: ...
    def _get_raw(self, key: str) -> bytes | None:
        """The encoded bytes of key's value (canonical form), or None."""

    def _put_raw(self, key: str, data: bytes) -> None:
        """Store encoded bytes (from _get_raw or encode_value) as key's value."""

    def _check_integrity(self) -> list[str]: ...
    def _stripe_items(self, stripe: int) -> list[tuple[str, Any]]: ...
    def view(self, key: str) -> Any:
        """
        The value of key without copying it: a read-only ndarray (arrays) or memoryview (bytes) that pins the record while any object uses it.
        """

    def _begin_build(
        self,
        key: str,
        descr: bytes | None,
        shape: tuple[int, ...] | None,
        fortran: bool,
        nbytes: int,
    ) -> PinnedBuffer: ...
    def _publish_built(self, key: str, buffer: PinnedBuffer) -> None: ...
    def _incr(self, key: str, delta: int | float) -> int | float: ...
    def _compare_and_set(self, key: str, expected: Any, missing: bool, value: Any) -> bool: ...
    def _version(self, key: str) -> int | None: ...
    def _wait_slice(self, key: str, seen: int, slice: float) -> tuple[bool, int | None]: ...
    def _lock_slot(self, name: str) -> int: ...
    def _lock_acquire(self, slot: int, timeout: float) -> int: ...
    def _lock_release(self, slot: int) -> None: ...
    def _lock_locked(self, slot: int) -> bool: ...
    def _value_info(
        self, key: str
    ) -> tuple[str, int, bytes | None, tuple[int, ...] | None] | None: ...
    def close(self) -> None:
        """Unmap the segment from this process; the data stays for other processes."""

    def is_closed(self) -> bool:
        """True once close() has been called on this handle."""

    @property
    def name(self) -> str:
        """The segment's name."""

    @property
    def segment_size(self) -> int:
        """The segment's size in bytes."""

    @property
    def max_keys(self) -> int:
        """The most keys the dict can hold."""

    @property
    def stripes(self) -> int:
        """The number of lock stripes."""

    @property
    def mode(self) -> int:
        """The permission bits the segment was created with."""

    @property
    def _identity(self) -> tuple[int, int]:
        """
        (creation stamp, hash seed): what tells this segment from a later one of the same name.
        """

    @property
    def created(self) -> bool:
        """
        True if this handle created the segment (False in a forked child, which inherits the handle but is not the creator).
        """

    @property
    def allow_pickle(self) -> bool:
        """False if this handle refuses to store or load pickled values."""

    @property
    def creator_pid(self) -> int:
        """PID of the process that created it."""
