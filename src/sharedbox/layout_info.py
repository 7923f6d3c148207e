"""Facts about the segment layout that tools and tests need (no shared state)."""

from __future__ import annotations

from . import _core


def lock_word_ranges(d) -> list:
    """Byte ranges [lo, hi) of the robust mutexes inside d's segment."""
    lo = _core.ALLOC_MUTEX_OFFSET
    ranges = [(lo, lo + _core.MUTEX_BYTES)]
    for i in range(d.stripes):
        lo = _core.PAGE_BYTES + i * _core.STRIPE_BYTES + _core.STRIPE_MUTEX_OFFSET
        ranges.append((lo, lo + _core.MUTEX_BYTES))
    return ranges
