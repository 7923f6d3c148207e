"""Segment layer: create, attach, close, unlink, and the arguments that shape them."""

import os
import stat
from multiprocessing import shared_memory

import pytest

from conftest import remove_segment, unique_name
from sharedbox import (
    IncompatibleSegmentError,
    InsufficientSharedMemoryError,
    SegmentMismatchWarning,
    SegmentNotFoundError,
    SharedDict,
    SharedDictClosedError,
    _core,
)


def test_create_then_attach_sees_same_data(name):
    a = SharedDict(name, size=1 << 20, max_keys=10)
    a["k"] = "v"
    b = SharedDict(name, create=False)
    assert b["k"] == "v"
    b["k2"] = 2
    assert a["k2"] == 2
    assert a.created and not b.created
    b.close()
    a.close()


def test_create_true_attaches_with_the_segments_own_parameters(name):
    a = SharedDict(name, size=1 << 20, max_keys=10, stripes=4)
    with pytest.warns(SegmentMismatchWarning):  # the arguments were ignored
        b = SharedDict(name, size=64 << 20, max_keys=5000, stripes=64)
    assert (b.segment_size, b.max_keys, b.stripes) == (1 << 20, 10, 4)
    assert not b.created
    a.close()
    b.close()


def test_data_is_the_second_positional_argument(name):
    d = SharedDict(name, {"key1": "value1", "key2": [1, 2, 3]}, size=1 << 20)
    assert dict(d.items()) == {"key1": "value1", "key2": [1, 2, 3]}
    d.close()


def test_other_arguments_are_keyword_only(name):
    with pytest.raises(TypeError):
        SharedDict(name, None, 1 << 20)


def test_spec_defaults(name):
    d = SharedDict(name)
    assert d.segment_size == 128 * 1024 * 1024
    assert d.max_keys == 128
    assert d.stripes == _core.default_stripes(128)
    d.close()


def test_create_false_on_missing_segment_names_it():
    missing = unique_name("missing")
    with pytest.raises(SegmentNotFoundError, match=missing):
        SharedDict(missing, create=False)
    with pytest.raises(FileNotFoundError):  # the builtin base class
        SharedDict(missing, create=False)


@pytest.mark.parametrize("bad", ["", "a/b", "/lead", "x" * 256, "nul\0char", ".", ".."])
def test_invalid_names_are_value_errors(bad):
    with pytest.raises(ValueError):
        SharedDict(bad, size=1 << 20)


def test_name_must_be_str():
    with pytest.raises(TypeError):
        SharedDict(b"bytes-name")


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"size": 0}, ValueError),
        ({"size": -5}, ValueError),
        ({"size": 1000}, ValueError),  # too small for the header and stripes
        ({"size": 1 << 60}, ValueError),  # absurd
        ({"size": 1.5}, TypeError),
        ({"size": True}, TypeError),
        ({"max_keys": 0}, ValueError),
        ({"max_keys": -1}, ValueError),
        ({"max_keys": 1 << 40}, ValueError),
        ({"max_keys": "10"}, TypeError),
        ({"stripes": 3}, ValueError),
        ({"stripes": 0}, ValueError),
        ({"stripes": 8192}, ValueError),
        ({"mode": 0o1777}, ValueError),
    ],
)
def test_bad_parameters_are_refused_and_leave_no_segment(name, kwargs, exc):
    with pytest.raises(exc):
        SharedDict(name, **kwargs)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_size_larger_than_dev_shm_is_refused_at_creation(name):
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    with pytest.raises(InsufficientSharedMemoryError, match="--shm-size"):
        SharedDict(name, size=free + (1 << 30))
    assert not os.path.exists(f"/dev/shm/{name}")


def test_segment_is_owner_only_by_default(name):
    d = SharedDict(name, size=1 << 20)
    mode = stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode)
    assert mode == 0o600
    d.close()


def test_mode_option_sets_permissions(name):
    old = os.umask(0o077)  # the requested mode wins over the umask
    try:
        d = SharedDict(name, size=1 << 20, mode=0o640)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o640
    d.close()


def test_foreign_segment_is_refused():
    shm = shared_memory.SharedMemory(create=True, size=1 << 16)
    try:
        shm.buf[:] = os.urandom(1 << 16)
        with pytest.raises(IncompatibleSegmentError, match="not a sharedbox segment"):
            SharedDict(shm.name, create=False)
        with pytest.raises(IncompatibleSegmentError):
            SharedDict(shm.name)  # create=True must not overwrite it either
        assert bytes(shm.buf[:8]) != b"\0" * 8
    finally:
        shm.close()
        shm.unlink()


def test_tiny_foreign_segment_is_refused():
    shm = shared_memory.SharedMemory(create=True, size=100)
    try:
        with pytest.raises(IncompatibleSegmentError):
            SharedDict(shm.name, create=False, attach_timeout=0.2)
    finally:
        shm.close()
        shm.unlink()


def test_newer_layout_version_is_refused(name):
    d = SharedDict(name, size=1 << 20)
    d.close()
    with open(f"/dev/shm/{name}", "r+b") as f:
        f.seek(8)
        f.write((_core.LAYOUT_VERSION + 1).to_bytes(4, "little"))
    with pytest.raises(IncompatibleSegmentError, match="layout version"):
        SharedDict(name, create=False)


def test_close_is_idempotent_and_use_after_close_is_a_clear_error(name):
    d = SharedDict(name, size=1 << 20)
    d["a"] = 1
    d.close()
    d.close()
    assert d.is_closed()
    for op in (
        lambda: d["a"],
        lambda: d.__setitem__("a", 2),
        lambda: d.__delitem__("a"),
        lambda: "a" in d,
        lambda: len(d),
        lambda: d.get("a"),
        lambda: list(d),
        lambda: d.keys_atomic(),
        lambda: d.get_stats(),
        lambda: d.pop("a"),
    ):
        with pytest.raises(SharedDictClosedError, match="closed"):
            op()
    with pytest.raises(RuntimeError):  # the spec's family for lifecycle errors
        d["a"]
    # the data survived the close
    e = SharedDict(name, create=False)
    assert e["a"] == 1
    e.close()


def test_unlink_requires_close_and_removes_the_name(name):
    d = SharedDict(name, size=1 << 20)
    with pytest.raises(RuntimeError, match="close"):
        d.unlink()
    d.close()
    d.unlink()
    assert not os.path.exists(f"/dev/shm/{name}")
    with pytest.raises(SegmentNotFoundError):
        SharedDict(name, create=False)
    with pytest.raises(SegmentNotFoundError):
        d.unlink()


def test_other_handles_keep_working_after_unlink(name):
    a = SharedDict(name, size=1 << 20)
    b = SharedDict(name, create=False)
    a.close()
    a.unlink()
    b["still"] = "here"
    assert b["still"] == "here"
    b.close()


def test_context_manager_closes(name):
    with SharedDict(name, size=1 << 20) as d:
        d["x"] = 1
    assert d.is_closed()


def test_creator_pid_is_recorded(name):
    d = SharedDict(name, size=1 << 20)
    assert d.creator_pid == os.getpid()
    d.close()


def test_remove_segment_helper_cleans_up():
    n = unique_name()
    SharedDict(n, size=1 << 20).close()
    remove_segment(n)
    assert not os.path.exists(f"/dev/shm/{n}")
