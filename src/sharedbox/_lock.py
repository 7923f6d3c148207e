"""SharedLock: a named lock that works across processes (SharedDict.lock).

A robust, process-shared mutex in the segment's header, one of a fixed number
of named slots.  Unlike the stripe locks, which no Python code ever runs
under, this one exists to be held while Python code runs: a read-modify-write
of several keys, say.  Keep it short anyway: every other process that wants
it waits.
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["SharedLock"]

# Waits are cut into slices so that Ctrl-C (KeyboardInterrupt) and close()
# from another thread are noticed; between slices the GIL is taken briefly.
_SLICE_S = 0.1


def _check_timeout(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 (or None: no limit), got {timeout}")
    return float(timeout)


class SharedLock:
    """A cross-process lock named ``name`` in a SharedDict's segment.

    ``with d.lock("jobs"): ...`` or ``acquire(timeout=None) -> bool`` and
    ``release()``.  Not reentrant.  While a thread waits for it the GIL is
    released.  If the holder dies (even by SIGKILL), the next acquirer gets the
    lock and ``recovered`` is True for that acquisition: whatever the dead
    holder was doing may be half done.  A thread that releases a lock it does
    not hold gets ``RuntimeError``.
    """

    def __init__(self, owner: Any, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"lock name must be a str, not {type(name).__name__}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("lock name must be valid UTF-8 text (no lone surrogates)") from None
        self._owner = owner
        self._name = name
        self._slot = owner._lock_slot(name)
        self.recovered = False

    @property
    def name(self) -> str:
        return self._name

    def acquire(self, timeout: Optional[float] = None) -> bool:
        """Take the lock; wait at most ``timeout`` seconds (None: as long as it
        takes; 0: do not wait).  Returns whether it was taken."""
        import time

        timeout = _check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _SLICE_S if deadline is None else min(_SLICE_S, deadline - time.monotonic())
            got = self._owner._lock_acquire(self._slot, max(left, 0.0))
            if got:
                self.recovered = got == 2
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def release(self) -> None:
        """Let the lock go; ``RuntimeError`` if this thread does not hold it."""
        self._owner._lock_release(self._slot)

    def locked(self) -> bool:
        """Whether some thread (of any process) holds the lock now."""
        return self._owner._lock_locked(self._slot)

    def __enter__(self) -> "SharedLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[Any, tuple[Any, str]]:
        # Travels as its dict (which travels as its name) and its name.
        return (_rebuild, (self._owner, self._name))

    def __repr__(self) -> str:
        return f"<SharedLock {self._name!r} of {self._owner.name!r}>"


def _rebuild(owner: Any, name: str) -> SharedLock:
    return owner.lock(name)
