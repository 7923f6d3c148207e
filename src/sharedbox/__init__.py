"""sharedbox: a dict in named POSIX shared memory, shared by many processes.

>>> from sharedbox import SharedDict
>>> d = SharedDict("my_dict", size=64 * 1024 * 1024, max_keys=1000)
>>> d["answer"] = 42

Any process on the machine can then ``SharedDict("my_dict", create=False)``
and read or write the same dict.  See the README and docs/ for the guarantees.
"""

from ._dict import DEFAULT_MAX_KEYS, DEFAULT_SIZE, SharedDict
from ._segments import SegmentInfo, list_segments
from ._redis import RedisDict, RedisLock
from ._lock import SharedLock
from ._sentinel import MISSING
from .errors import (
    BackendUnavailableError,
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
    SharedBoxError,
    SharedDictClosedError,
    SharedDictOpenError,
    TooManyKeysError,
    TooManyLocksError,
    TooManyViewsError,
    ValueTooLargeError,
)

__version__ = "0.1.0"

__all__ = [
    "SharedDict",
    "list_segments",
    "SegmentInfo",
    "RedisDict",
    "RedisLock",
    "MISSING",
    "SharedLock",
    "TooManyLocksError",
    "TooManyViewsError",
    "DEFAULT_SIZE",
    "DEFAULT_MAX_KEYS",
    "SharedBoxError",
    "SegmentNotFoundError",
    "IncompatibleSegmentError",
    "SegmentNotReadyError",
    "SegmentFullError",
    "ValueTooLargeError",
    "TooManyKeysError",
    "SharedDictClosedError",
    "CorruptSegmentError",
    "InsufficientSharedMemoryError",
    "PickleRefusedError",
    "SharedDictOpenError",
    "SegmentReplacedError",
    "SegmentMismatchError",
    "SegmentMismatchWarning",
    "BackendUnavailableError",
    "__version__",
]
