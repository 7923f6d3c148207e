"""create_array and create_bytes: values written in place in the segment.

The native half (PinnedBuffer, Dict::begin_build / publish_built) allocates
the block, keeps it pinned while Python fills it, and publishes it with the
same journaled, atomic step as any write.  This module is the with-block
around it, and the rule that keeps a published record immutable:

A writable view of the block that outlives the with-block (a slice, a
memoryview, another array over it) could write into the record after other
processes can read it.  So at the end of the block, if anything besides the
``as`` name refers to the yielded object, or to the PinnedBuffer under it, or
still holds a buffer exported from it, the value is published as a copy, and
the block is freed once those views are gone; otherwise it is published in
place, with no copy.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

from . import _codec, _core

if TYPE_CHECKING:
    from ._dict import SharedDict


def _shape_of(shape: Any) -> tuple:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(operator.index(n) for n in shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a tuple of ints, not {shape!r}") from None
    if any(n < 0 for n in dims):
        raise ValueError(f"shape must not have negative dimensions, got {dims}")
    return dims


class _Builder:
    """The with-block of create_array / create_bytes (see module docstring)."""

    def __init__(self, d: SharedDict, key: str, nbytes: int) -> None:
        if not isinstance(key, str):
            raise TypeError(f"SharedDict keys must be str, not {type(key).__name__}")
        self._dict = d
        self._key = key
        self._nbytes = nbytes
        self._buffer: Any = None
        self._obj: Any = None
        self._refs: Any = None
        self._entered = False

    def _begin(self) -> Any:  # returns the PinnedBuffer
        raise NotImplementedError

    def _wrap(self, buffer: Any) -> Any:
        raise NotImplementedError

    def __enter__(self) -> Any:
        if self._entered:
            raise RuntimeError("this create_array/create_bytes block was entered already")
        self._entered = True
        self._buffer = self._begin()
        self._obj = self._wrap(self._buffer)
        self._refs = _core._refcounts(self._buffer, self._obj)
        return self._obj

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        refs = _core._refcounts(self._buffer, self._obj)
        buffer, obj = self._buffer, self._obj
        self._buffer = self._obj = None
        # Nothing else refers to the memory: the buffer is referred to only
        # by the object, and the object at most by the `as` name in addition.
        alone = refs[0] == self._refs[0] and refs[1] <= self._refs[1] + 1
        # Views that share the yielded object's buffer (memoryview slices and
        # casts, arrays over it) hold an export of `buffer` without a
        # reference to either object: the export count sees them.
        sealed = self._seal_object(obj) and buffer.exports == 0
        buffer._make_read_only()
        if exc_type is not None:
            return None  # nothing published; the block is freed with the last view of it
        if alone and sealed:
            self._dict._publish_built(self._key, buffer)
        else:
            self._dict[self._key] = self._copy_of(obj, buffer)

    def _seal_object(self, obj: Any) -> bool:
        """Make the yielded object unwritable; False if views of it may remain."""
        raise NotImplementedError

    def _copy_of(self, obj: Any, buffer: Any) -> Any:
        raise NotImplementedError


class ArrayBuilder(_Builder):
    def __init__(self, d: SharedDict, key: str, shape: Any, dtype: Any, order: str) -> None:
        import numpy as np

        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', not {order!r}")
        self._shape = _shape_of(shape)
        self._dtype = np.dtype(dtype)
        self._descr = _codec.descr_of(self._dtype)
        self._order: Any = order
        super().__init__(d, key, math.prod(self._shape) * self._dtype.itemsize)

    def _begin(self) -> Any:
        return self._dict._begin_build(
            self._key, self._descr, self._shape, self._order == "F", self._nbytes
        )

    def _wrap(self, buffer: Any) -> Any:
        import numpy as np

        return np.ndarray(self._shape, dtype=self._dtype, buffer=buffer, order=self._order)

    def _seal_object(self, obj: Any) -> bool:
        obj.flags.writeable = False  # and the buffer refuses to make it writable again
        return True

    def _copy_of(self, obj: Any, buffer: Any) -> Any:
        return obj  # d[key] = array copies it into a new record


class BytesBuilder(_Builder):
    def __init__(self, d: SharedDict, key: str, nbytes: int) -> None:
        try:
            n = operator.index(nbytes)
        except TypeError:
            raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}") from None
        if n < 0:
            raise ValueError(f"nbytes must not be negative, got {n}")
        super().__init__(d, key, n)

    def _begin(self) -> Any:
        return self._dict._begin_build(self._key, None, None, False, self._nbytes)

    def _wrap(self, buffer: Any) -> Any:
        return memoryview(buffer)

    def _seal_object(self, obj: Any) -> bool:
        try:
            obj.release()  # fails while slices of it or exports from it live
        except BufferError:
            return False
        return True

    def _copy_of(self, obj: Any, buffer: Any) -> Any:
        return memoryview(buffer)  # read-only now; d[key] = memoryview stores its bytes
