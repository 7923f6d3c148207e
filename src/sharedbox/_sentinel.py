"""``sharedbox.MISSING``: "no value", where ``None`` is a value like any other.

``compare_and_set(key, MISSING, new)`` stores ``new`` only if ``key`` is
absent.  It is a module-level singleton: it pickles as a reference to this
name, so it stays itself when it crosses to another process.
"""

from __future__ import annotations

from typing import Any, final

__all__ = ["MISSING", "MissingType"]


@final
class MissingType:
    """The type of :data:`MISSING`; it has exactly one instance."""

    _instance: Any = None

    def __new__(cls) -> "MissingType":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "sharedbox.MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        # Unpickles as the module attribute: the same object everywhere.
        return "MISSING"


MISSING = MissingType()
