"""Python half of the value codec (the native half is src/binding/codec.hpp).

The native module stores None, bool, int64, float, str and bytes itself; it
calls these helpers for pickled values and for NumPy arrays.  NumPy is imported
only when an array is actually stored or read.
"""

from __future__ import annotations

import ast
import pickle
from typing import Any

PICKLE_PROTOCOL = 5

_descr_of: dict = {}  # dtype -> descr bytes
_dtype_of: dict = {}  # descr bytes -> dtype
_CACHE_LIMIT = 1024


class PickleRefused(ValueError):
    pass


def dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception as exc:
        raise ValueError(
            f"cannot store a value of type {type(value).__qualname__}: "
            f"it cannot be pickled ({type(exc).__name__}: {exc})"
        ) from exc


def loads(data: bytes) -> Any:
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise ValueError(
            "cannot read a stored value: unpickling failed in this process "
            f"({type(exc).__name__}: {exc}); is its class importable here?"
        ) from exc


def array_header(arr):
    """(descr, shape, fortran, data_ptr, nbytes, keepalive), or None to pickle."""
    import numpy as np

    dtype = arr.dtype
    if dtype.hasobject:
        return None
    descr = _descr_of.get(dtype)
    if descr is None:
        descr = repr(np.lib.format.dtype_to_descr(dtype)).encode()
        if _descr_to_dtype(descr) != dtype:
            return None  # a dtype the .npy description cannot carry: pickle it
        if len(_descr_of) < _CACHE_LIMIT:
            _descr_of[dtype] = descr
    fortran = False
    if arr.flags.c_contiguous:
        data = arr
    elif arr.flags.f_contiguous:
        data, fortran = arr, True
    else:
        data = np.ascontiguousarray(arr)
    return descr, data.shape, fortran, data.__array_interface__["data"][0], data.nbytes, data


def _descr_to_dtype(descr: bytes):
    dtype = _dtype_of.get(descr)
    if dtype is None:
        import numpy as np

        dtype = np.lib.format.descr_to_dtype(ast.literal_eval(descr.decode()))
        if len(_dtype_of) < _CACHE_LIMIT:
            _dtype_of[descr] = dtype
    return dtype


def array_new(descr: bytes, shape: tuple, fortran: bool, nbytes: int):
    """A new, writeable array for a stored one: (array, data_ptr, nbytes)."""
    import math

    import numpy as np

    try:
        dtype = _descr_to_dtype(descr)
    except Exception as exc:
        raise ValueError(f"a stored array has an unreadable dtype {descr!r}") from exc
    # Check before allocating: a damaged header must not make us allocate
    # (or try to allocate) an arbitrary amount of memory.
    if math.prod(shape) * dtype.itemsize != nbytes:
        raise ValueError("a stored array's shape and dtype do not match its data size")
    arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    return arr, arr.__array_interface__["data"][0], arr.nbytes


def dtype_of_descr(descr: bytes):
    """The dtype of a stored array (SharedDict.view builds the array itself)."""
    try:
        return _descr_to_dtype(descr)
    except Exception as exc:
        raise ValueError(f"a stored array has an unreadable dtype {descr!r}") from exc


def descr_of(dtype) -> bytes:
    """The descr the codec stores for dtype (create_array); ValueError if it cannot."""
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError("create_array() cannot hold Python objects (dtype object): store such "
                        "arrays with d[key] = array, which pickles them")
    descr = _descr_of.get(dtype)
    if descr is None:
        descr = repr(np.lib.format.dtype_to_descr(dtype)).encode()
        if _descr_to_dtype(descr) != dtype:
            raise TypeError(f"create_array() cannot store dtype {dtype!r} natively; use d[key] = array")
        if len(_descr_of) < _CACHE_LIMIT:
            _descr_of[dtype] = descr
    return descr
