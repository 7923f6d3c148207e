import os
import uuid

import pytest

from sharedbox import SharedDict
from sharedbox import _core


def unique_name(prefix: str = "sbxtest") -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def remove_segment(name: str) -> None:
    try:
        _core.unlink_segment(name)
    except FileNotFoundError:
        pass


@pytest.fixture
def name():
    """A fresh segment name, unlinked after the test whatever happened."""
    n = unique_name()
    yield n
    remove_segment(n)


@pytest.fixture
def sd(name):
    """A small SharedDict, closed and unlinked after the test."""
    d = SharedDict(name, size=4 << 20, max_keys=1000)
    yield d
    if not d.is_closed():
        assert d._check_integrity() == []
        d.close()
