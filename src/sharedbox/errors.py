"""The exceptions sharedbox raises, beyond the builtin ones the spec names.

Every class derives from :class:`SharedBoxError` and from the builtin exception
the API specification prescribes for its kind of failure, so ``except
RuntimeError`` (segment and memory-management errors) and ``except ValueError``
(bad arguments, values that cannot be serialised) keep working.
"""

from __future__ import annotations

__all__ = [
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
    "TooManyLocksError",
    "TooManyViewsError",
]


class SharedBoxError(Exception):
    """Base class of every sharedbox-specific exception."""


class SegmentNotFoundError(SharedBoxError, FileNotFoundError):
    """No segment has that name (``create=False``, ``unlink()`` twice)."""


class IncompatibleSegmentError(SharedBoxError, RuntimeError):
    """The named segment is not a sharedbox segment, or has a newer layout."""


class SegmentNotReadyError(IncompatibleSegmentError):
    """The segment's creator never finished initialising it (it died)."""


class SegmentFullError(SharedBoxError, RuntimeError):
    """No free block is large enough for the value; the dict is unchanged.

    Delete keys, or create a larger SharedDict (see ``recommend_sizing()``).
    """


class ValueTooLargeError(SegmentFullError):
    """The value is larger than the whole segment's heap: it can never fit."""


class TooManyKeysError(SharedBoxError, RuntimeError):
    """Inserting a new key would exceed ``max_keys``; the dict is unchanged.

    Overwriting an existing key is always allowed; deleting makes room.
    """


class SharedDictClosedError(SharedBoxError, RuntimeError):
    """The handle was closed; open a new ``SharedDict`` to use the segment."""


class SharedDictOpenError(SharedBoxError, RuntimeError):
    """``unlink()`` was called on a handle that is still open; ``close()`` it first."""


class SegmentReplacedError(SharedBoxError, RuntimeError):
    """The name now belongs to another segment than the one this handle opened.

    Raised by ``unlink()``: this handle's segment was unlinked (by someone)
    and the name reused, so unlinking the name would remove somebody else's
    dict.  ``is_current()`` tells beforehand.
    """


class SegmentMismatchError(SharedBoxError, ValueError):
    """``strict=True``, and the existing segment was created with other parameters.

    ``size``, ``max_keys``, ``stripes`` and ``mode`` apply only when a call
    creates the segment; the message lists each one that differs.
    """


class SegmentMismatchWarning(UserWarning):
    """Attached to an existing segment whose size, max_keys, stripes or mode
    differ from the ones passed (they apply only at creation, so they were
    ignored).  ``strict=True`` raises SegmentMismatchError instead."""


class CorruptSegmentError(SharedBoxError, RuntimeError):
    """Shared state failed a consistency check (memory overwritten by a foreign writer)."""


class InsufficientSharedMemoryError(SharedBoxError, OSError):
    """``/dev/shm`` has less free space than the requested segment size."""


class PickleRefusedError(SharedBoxError, ValueError):
    """A handle opened with ``allow_pickle=False`` met a value that needs pickle.

    Unpickling runs code chosen by whoever wrote the bytes; anyone who can write
    the segment can write them.  ``allow_pickle=False`` limits a handle to the
    native encodings (None, bool, int64, float, str, bytes, dicts, lists and
    tuples of those, NumPy arrays).
    """


class TooManyLocksError(SharedBoxError, RuntimeError):
    """Every named-lock slot of the segment is taken (``SharedDict.lock``)."""


class TooManyViewsError(SegmentFullError):
    """This process holds as many zero-copy views (pins) of the segment as it
    may, or 64 processes already hold views of it (``SharedDict.view``,
    ``create_array``, ``create_bytes``).  Release views you no longer need;
    ``get_stats()["pin_holders"]`` shows which processes hold them."""


class BackendUnavailableError(SharedBoxError, RuntimeError):
    """A remote backend (a Redis server) could not be reached, or the
    connection dropped or timed out.

    The message names the server's URL without its password.  A write that
    raised this was either applied whole or not at all (the server may have
    run it before the connection dropped); the handle reconnects on its next
    operation once the server is back.
    """
