"""The value codec and key rules, shared by every backend.

Values are encoded by the native codec (``_core.encode_value``): the same
bytes that a SharedDict writes into its segment, in canonical form (see
src/binding/values.hpp).  A backend that stores bytes elsewhere (RedisDict) stores exactly
these bytes, so a value can move between backends byte for byte.
"""

from __future__ import annotations

from typing import Any

from . import _core
from . import _dict  # noqa: F401  (registers the codec's pickle and NumPy helpers)

__all__ = ["encode", "decode", "validate", "key_bytes"]

encode = _core.encode_value
decode = _core.decode_value
validate = _core.validate_encoded


def key_bytes(key: Any, kind: str) -> bytes:
    """The UTF-8 bytes of a key, with the errors SharedDict raises for a bad one."""
    if not isinstance(key, str):
        raise TypeError(f"{kind} keys must be str, not {type(key).__name__}")
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{kind} keys must be encodable as UTF-8; this key contains a lone surrogate "
            "code point"
        ) from exc
