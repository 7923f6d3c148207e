"""Type stub for sharedbox._dict (checked against the runtime by tests/test_typing.py).

At runtime SharedDict derives from the native SharedDictCore and is registered
as a virtual subclass of MutableMapping (a nanobind type cannot also take
ABCMeta as its metaclass); for type checkers it is a MutableMapping[str, Any].
"""

from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Literal, NoReturn, TypedDict, type_check_only

import numpy
from numpy.typing import DTypeLike
from typing_extensions import Self

from ._core import SharedDictCore
from ._lock import SharedLock

__all__ = ["SharedDict", "DEFAULT_SIZE", "DEFAULT_MAX_KEYS"]

DEFAULT_SIZE: int
"""Default segment size in bytes: 128 MiB."""
DEFAULT_MAX_KEYS: int
"""Default max_keys: 128."""

@type_check_only
class _Stats(TypedDict):
    """What get_stats() returns."""

    total_entries: int
    sample_size: int
    avg_key_utf8_bytes: float
    avg_value_pickle_bytes: float
    estimated_data_bytes: int
    segment_name: str
    segment_size: int
    bytes_used: int
    bytes_free: int
    largest_free_block: int
    index_bytes: int
    record_bytes: int
    max_keys: int
    stripes: int
    entries: int
    recoveries: int
    pins: int
    pinned_bytes: int
    pin_holders: dict[int, int]
    max_pins_per_process: int

@type_check_only
class _SizingRecommendation(TypedDict):
    total_segment_size: int
    max_keys: int
    bytes_per_entry: int
    current_segment_size: int
    current_max_keys: int

@type_check_only
class _LockRecommendation(TypedDict):
    stripes: int
    current_stripes: int
    default_stripes: int
    reason: str

@type_check_only
class _SizingAdvice(TypedDict):
    """What recommend_sizing() returns."""

    current_stats: _Stats
    target_entries: int
    sizing_recommendation: _SizingRecommendation
    lock_recommendation: _LockRecommendation

class SharedDict(SharedDictCore, MutableMapping[str, Any]):
    """A dict of str keys in a named POSIX shared-memory segment."""

    __hash__: ClassVar[None]  # type: ignore[assignment]
    # size=128 MiB, max_keys=128, mode=0o600.  The runtime defaults are int
    # subclasses (so that __init__ can tell a default from a passed value),
    # hence "..." here.
    def __init__(
        self,
        name: str,
        data: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        *,
        size: int = ...,
        create: bool = True,
        max_keys: int = ...,
        stripes: int | None = None,
        mode: int = ...,
        attach_timeout: float = 5.0,
        allow_pickle: bool = True,
        strict: bool = False,
    ) -> None: ...
    @classmethod
    def temporary(
        cls,
        data: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        *,
        size: int = ...,
        max_keys: int = ...,
        stripes: int | None = None,
        mode: int = ...,
        allow_pickle: bool = True,
        prefix: str = "sbx_tmp",
    ) -> Self: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> KeysView[str]: ...
    def items(self) -> ItemsView[str, Any]: ...
    def values(self) -> ValuesView[Any]: ...
    def keys_atomic(self) -> list[str]: ...
    def pop(self, key: str, default: Any = ...) -> Any: ...
    def popitem(self) -> tuple[str, Any]: ...
    def setdefault(self, key: str, default: Any = None) -> Any: ...
    def clear(self) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...
    def close(self) -> None: ...
    def unlink(self) -> None: ...
    def is_current(self) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def __copy__(self) -> NoReturn: ...
    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn: ...
    def __reduce__(
        self,
    ) -> tuple[
        Callable[[str, bool, tuple[int, int]], SharedDict], tuple[str, bool, tuple[int, int]]
    ]: ...
    def incr(self, key: str, delta: int | float = 1) -> int | float: ...
    def compare_and_set(self, key: str, expected: Any, new: Any) -> bool: ...
    def version(self, key: str) -> int | None: ...
    def wait(self, key: str, version: int | None = ..., timeout: float | None = None) -> int | None: ...
    async def wait_async(
        self, key: str, version: int | None = ..., timeout: float | None = None
    ) -> int | None: ...
    def lock(self, name: str = "default") -> SharedLock: ...
    def view(self, key: str) -> numpy.ndarray | memoryview: ...
    def create_array(
        self,
        key: str,
        shape: int | tuple[int, ...],
        dtype: DTypeLike,
        order: Literal["C", "F"] = "C",
    ) -> AbstractContextManager[numpy.ndarray]: ...
    def create_bytes(self, key: str, nbytes: int) -> AbstractContextManager[memoryview]: ...
    def get_stats(self) -> _Stats: ...
    def recommend_sizing(self, target_entries: int | None = None) -> _SizingAdvice: ...
