"""Lifecycle and misuse: every wrong use gets a clear error, never a crash,
and a handle never removes or keeps alive what is not its own.

Uninitialised instances, failed constructors, fork, stale handles, re-opening
with other parameters, temporary dicts, copies.
"""

import copy
import gc
import math
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

from conftest import remove_segment, unique_name
from sharedbox import (
    SegmentNotReadyError,
    SegmentMismatchError,
    SegmentMismatchWarning,
    SegmentNotFoundError,
    SegmentReplacedError,
    SharedBoxError,
    SharedDict,
    SharedDictOpenError,
    TooManyKeysError,
    _core,
)


def shm_path(name):
    return f"/dev/shm/{name}"


def run_python(code, *args, timeout=120):
    """Runs code in a fresh interpreter; (returncode, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def mapped_here(name):
    """Whether this process maps segment `name` (per /proc/self/maps).  Matched
    by inode, not by path: a creator's mapping is listed under the temporary
    name the segment was built under (see segment.cpp)."""
    st = os.stat(shm_path(name))
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and int(parts[4]) == st.st_ino:
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                if os.makedev(major, minor) == st.st_dev:
                    return True
    return False


# ---------------------------------------------------------------------------
# 1. An instance whose __init__ never ran.


def test_uninitialised_instances_raise_type_error_not_segfault():
    # In a child process: before the fix these operations segfaulted.
    code = """
        from sharedbox import SharedDict

        class Forgetful(SharedDict):
            def __init__(self, name):
                self.label = name          # forgot super().__init__()

        ops = {
            "len": len, "bool": bool, "getitem": lambda d: d["k"],
            "contains": lambda d: "k" in d, "setitem": lambda d: d.__setitem__("k", 1),
            "delitem": lambda d: d.__delitem__("k"), "get": lambda d: d.get("k"),
            "keys_atomic": lambda d: d.keys_atomic(), "iter": lambda d: list(d),
            "close": lambda d: d.close(),
        }
        for make in (lambda: SharedDict.__new__(SharedDict), lambda: Forgetful("x")):
            d = make()
            for op_name, op in ops.items():
                try:
                    op(d)
                except TypeError as exc:
                    print(op_name, "TypeError", str(exc).splitlines()[0], flush=True)
                else:
                    print(op_name, "no error", flush=True)
            print("repr", repr(d))
    """
    code_rc, out, err = run_python(code)
    assert code_rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 * 11
    assert all(" no error" not in line for line in lines), out
    assert "repr <SharedDict (not initialised)>" in lines
    assert "repr <Forgetful (not initialised)>" in lines
    for op_name in ("len", "bool", "getitem", "contains", "setitem", "delitem"):
        assert any(
            line.startswith(f"{op_name} TypeError") and "super().__init__" in line
            for line in lines
        ), out


# ---------------------------------------------------------------------------
# 2. A failed unpickle must not leave a view of memory that is freed.


def _refuse_to_load():
    raise RuntimeError("cannot be loaded here")


class FailsToLoad:
    def __init__(self, size):
        self.payload = b"x" * size

    def __reduce__(self):
        return (_refuse_to_load, ())


def _traceback_locals(exc):
    """Every local variable of every frame in exc's traceback and its causes."""
    found = []
    while exc is not None:
        tb = exc.__traceback__
        while tb is not None:
            found.extend(tb.tb_frame.f_locals.values())
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return found


@pytest.mark.parametrize("size", [10, 100_000])  # the sink's inline buffer, then its heap
def test_failed_unpickle_keeps_no_view_of_a_freed_buffer(sd, size):
    sd["bad"] = FailsToLoad(size)
    with pytest.raises(ValueError, match="unpickling failed") as info:
        sd["bad"]
    assert isinstance(info.value.__cause__, RuntimeError)
    gc.collect()
    views = [v for v in _traceback_locals(info.value) if isinstance(v, memoryview)]
    # Before the fix: pickle's argument was a memoryview of the native
    # reader's private buffer, freed when the read returned, yet reachable
    # from this traceback.
    assert views == []
    with pytest.raises(ValueError):  # and the same through pop (read under the lock)
        sd.pop("bad")


# ---------------------------------------------------------------------------
# 3. fork() while another thread is inside an operation.


class BlocksWhilePickled:
    """Pickling it waits: a thread storing it stays inside d[k] = v."""

    def __init__(self, entered, release):
        self.entered, self.release = entered, release

    def __reduce__(self):
        self.entered.set()
        self.release.wait(60)
        return (int, (1,))


def test_close_in_a_child_forked_during_an_operation_unmaps(sd):
    entered, release = threading.Event(), threading.Event()
    writer = threading.Thread(target=sd.__setitem__,
                              args=("k", BlocksWhilePickled(entered, release)))
    writer.start()
    try:
        assert entered.wait(60)  # the writer thread is inside d[k] = v now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # child: only this thread exists here
            status = 1
            try:
                if not mapped_here(sd.name):  # the check must see the mapping first
                    os._exit(4)
                sd.close()
                status = 0 if not mapped_here(sd.name) else 3
            finally:
                os._exit(status)
    finally:
        release.set()
        writer.join(60)
    _, status = os.waitpid(pid, 0)
    # Before the fix the child inherited the writer's use count, so close()
    # waited for a thread that does not exist there and never unmapped (3).
    assert os.waitstatus_to_exitcode(status) == 0
    assert sd["k"] == 1  # the parent's writer finished normally


# ---------------------------------------------------------------------------
# 4. A huge attach_timeout is accepted.  Attaching never waits any more (a
# segment gets its name only once it is complete, see test_segment_safety.py),
# so the timeout cannot overflow into "give up at once"; a segment that is
# not ready is refused at once, whatever the timeout.


@pytest.mark.parametrize("timeout", [1e300, math.inf, 10**400], ids=["1e300", "inf", "10**400"])
def test_huge_attach_timeout(name, timeout):
    SharedDict(name, {"k": "v"}, size=1 << 20).close()
    d = SharedDict(name, create=False, attach_timeout=timeout)
    assert d["k"] == "v"
    d.close()
    # Make the segment look half-built: clear its ready mark (byte 16).
    with open(shm_path(name), "r+b") as f:
        f.seek(16)
        f.write(b"\0\0\0\0")
    start = time.monotonic()
    with pytest.raises(SegmentNotReadyError, match="not ready"):
        SharedDict(name, create=False, attach_timeout=timeout)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (math.nan, ValueError),
                                      ("5", TypeError), (True, TypeError)])
def test_bad_attach_timeout(name, bad, exc):
    with pytest.raises(exc):
        SharedDict(name, size=1 << 20, attach_timeout=bad)
    assert not os.path.exists(shm_path(name))


# ---------------------------------------------------------------------------
# 5. A failed SharedDict(name, data) leaves no segment behind.


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("no pickling")


@pytest.mark.parametrize(
    "data, exc",
    [
        ({"ok": 1, "bad": Unpicklable()}, ValueError),
        ({"ok": 1, 2: "int key"}, TypeError),
        ({f"k{i}": i for i in range(11)}, TooManyKeysError),  # max_keys=10
        ({"lone \ud800": 1}, ValueError),
        (5, TypeError),  # neither a mapping nor iterable
        ("ab", TypeError),  # an iterable, but not of pairs
        ([("a", 1), ("b", 2, 3)], TypeError),
        ([("a", 1), None], TypeError),
    ],
)
def test_failed_construction_removes_the_segment_it_created(name, data, exc):
    with pytest.raises(exc):
        SharedDict(name, data, size=1 << 20, max_keys=10)
    assert not os.path.exists(shm_path(name))


def test_data_as_pairs_and_as_keys_object(name):
    class KeysOnly:  # dict() accepts any object with keys() and __getitem__
        def keys(self):
            return ["a", "b"]

        def __getitem__(self, key):
            return key.upper()

    with SharedDict(name, [("x", 1), ("y", 2)], size=1 << 20) as d:
        assert dict(d.items()) == {"x": 1, "y": 2}
    remove_segment(name)
    with SharedDict(name, KeysOnly(), size=1 << 20) as d:
        assert dict(d.items()) == {"a": "A", "b": "B"}


def test_failed_data_on_attach_keeps_the_existing_segment(name):
    owner = SharedDict(name, {"keep": 1}, size=1 << 20)
    with pytest.raises(ValueError):
        SharedDict(name, {"bad": Unpicklable()})
    assert os.path.exists(shm_path(name))
    assert owner["keep"] == 1
    owner.close()


# ---------------------------------------------------------------------------
# 6. unlink() removes only this handle's segment; is_current().


def test_stale_handle_does_not_unlink_a_new_segment_of_the_same_name(name):
    old = SharedDict(name, {"v": "old"}, size=1 << 20)
    assert old.is_current()
    old.close()
    assert old.is_current()  # closing does not change what the name refers to
    _core.unlink_segment(name)  # someone else removes it ...
    assert not old.is_current()
    with pytest.raises(SegmentNotFoundError):
        old.unlink()
    new = SharedDict(name, {"v": "new"}, size=1 << 20)  # ... and reuses the name
    assert new.created and new.is_current()
    assert not old.is_current()
    with pytest.raises(SegmentReplacedError, match="another segment") as info:
        old.unlink()
    assert isinstance(info.value, SharedBoxError) and isinstance(info.value, RuntimeError)
    assert new["v"] == "new"  # untouched
    new.close()
    new.unlink()
    assert not os.path.exists(shm_path(name))


def test_is_current_sees_a_foreign_file_as_replaced(name):
    d = SharedDict(name, size=1 << 20)
    d.close()
    d.unlink()
    with open(shm_path(name), "wb") as f:
        f.write(os.urandom(8192))
    assert not d.is_current()
    with pytest.raises(SegmentReplacedError):
        d.unlink()
    assert os.path.exists(shm_path(name))


# ---------------------------------------------------------------------------
# 8. fork and copies.


def test_forked_child_is_not_the_creator(sd):
    assert sd.created
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            # The guide's rule "the creator unlinks" must not fire here.
            created = sd.created
            sd.close()
            if created:
                sd.unlink()
            status = 0 if not created else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sd.created  # still the creator here
    assert os.path.exists(shm_path(sd.name))
    sd["after"] = 1


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
def test_copies_are_refused_with_a_clear_message(sd, copier):
    sd["k"] = [1, 2]
    with pytest.raises(TypeError, match=r"dict\(d\)"):
        copier(sd)


def test_pickle_still_makes_a_handle(sd):
    sd["k"] = 1
    other = pickle.loads(pickle.dumps(sd))
    assert other.name == sd.name and other["k"] == 1 and not other.created
    other.close()


def test_a_pickled_handle_does_not_attach_to_a_replacement(name):
    d = SharedDict(name, {"v": "sent"}, size=1 << 20)
    sent = pickle.dumps(d)
    d.close()
    d.unlink()
    new = SharedDict(name, {"v": "other"}, size=1 << 20)  # the name is reused
    with pytest.raises(SegmentReplacedError, match="has been unlinked"):
        pickle.loads(sent)
    assert new["v"] == "other"
    new.close()


# ---------------------------------------------------------------------------
# 9 and 10. Clean errors for bad arguments and for unlink() on an open handle.


@pytest.mark.parametrize(
    "args, kwargs, exc",
    [
        (("\ud800",), {}, ValueError),
        (("ok",), {"size": 2**64}, ValueError),
        (("ok",), {"size": 2**200}, ValueError),
        (("ok",), {"max_keys": 2**64}, ValueError),
        (("ok",), {"stripes": 2**40}, ValueError),
        (("ok",), {"mode": 2**40}, ValueError),
        (("ok",), {"create": 1}, TypeError),
        (("ok",), {"strict": "yes"}, TypeError),
    ],
)
def test_bad_arguments_get_clean_errors(args, kwargs, exc):
    with pytest.raises(exc) as info:
        SharedDict(*args, **kwargs)
    assert "incompatible function arguments" not in str(info.value)
    assert not os.path.exists(shm_path("ok"))


def test_unlink_of_an_open_handle(sd):
    with pytest.raises(SharedDictOpenError, match="close") as info:
        sd.unlink()
    assert isinstance(info.value, SharedBoxError) and isinstance(info.value, RuntimeError)


# ---------------------------------------------------------------------------
# 11. Re-opening with other parameters.


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"size": 2 << 20}, "size=2097152 (it has 1048576)"),
        ({"max_keys": 20}, "max_keys=20 (it has 10)"),
        ({"stripes": 2}, "stripes=2 (it has 4)"),
        ({"mode": 0o640}, "mode=0o640 (it has 0o600)"),
    ],
)
def test_reopening_with_other_parameters_warns_or_with_strict_raises(name, kwargs, named):
    owner = SharedDict(name, size=1 << 20, max_keys=10, stripes=4)
    with pytest.warns(SegmentMismatchWarning, match=named.replace("(", r"\(").replace(")", r"\)")):
        other = SharedDict(name, **kwargs)
    assert not other.created
    other.close()
    with pytest.raises(SegmentMismatchError, match="strict|apply only") as info:
        SharedDict(name, strict=True, **kwargs)
    assert isinstance(info.value, ValueError)
    assert os.path.exists(shm_path(name))  # the strict failure did not remove it
    owner.close()


def test_reopening_with_the_same_or_no_parameters_is_quiet(name):
    owner = SharedDict(name, size=1 << 20, max_keys=10, stripes=4, mode=0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SharedDict(name).close()  # nothing passed: nothing to compare
        SharedDict(name, create=False).close()
        SharedDict(name, size=1 << 20, max_keys=10, stripes=4, mode=0o600, strict=True).close()
        SharedDict(name, size=1_048_000, strict=True).close()  # rounded up to 1 MiB too
    owner.close()


def test_too_many_keys_names_the_limit_and_the_remedy(name):
    with SharedDict(name, size=1 << 20, max_keys=3) as d:
        d.update(a=1, b=2, c=3)
        with pytest.raises(TooManyKeysError) as info:
            d["d"] = 4
        message = str(info.value)
        assert "max_keys=3" in message
        assert "larger max_keys" in message and "recommend_sizing" in message
        d["a"] = 10  # overwriting is always allowed


# ---------------------------------------------------------------------------
# 12. The default stripe count fits the size.


def test_default_stripes_fit_a_small_segment(name):
    with SharedDict(name, size=64 * 1024, max_keys=1000) as d:
        assert 1 <= d.stripes < _core.default_stripes(1000)
        d["k"] = "v"
        assert d["k"] == "v"
    remove_segment(name)
    with pytest.raises(ValueError, match="too small for 256 stripes"):
        SharedDict(name, size=64 * 1024, max_keys=1000, stripes=256)  # chosen: refused


def test_large_segments_keep_the_engine_default(name):
    with SharedDict(name, size=4 << 20, max_keys=1000) as d:
        assert d.stripes == _core.default_stripes(1000)


# ---------------------------------------------------------------------------
# 14. Temporary dicts.


def test_temporary_is_unlinked_on_close(tmp_path):
    d = SharedDict.temporary({"a": 1}, size=1 << 20, max_keys=10)
    assert d.created and d["a"] == 1 and d.max_keys == 10
    other = SharedDict(d.name, create=False)
    other.close()  # an ordinary handle: closing it removes nothing
    assert os.path.exists(shm_path(d.name))
    d.close()
    assert not os.path.exists(shm_path(d.name))
    d.close()  # twice is fine


def test_temporary_names_are_unique_and_with_closes():
    with SharedDict.temporary(size=1 << 20, prefix="sbxtest_tmp") as a, \
            SharedDict.temporary(size=1 << 20, prefix="sbxtest_tmp") as b:
        assert a.name != b.name and a.name.startswith(f"sbxtest_tmp_{os.getpid()}_")
        names = [a.name, b.name]
    assert not any(os.path.exists(shm_path(n)) for n in names)


def test_temporary_is_unlinked_when_collected():
    d = SharedDict.temporary(size=1 << 20)
    name = d.name
    del d
    gc.collect()
    assert not os.path.exists(shm_path(name))


def test_temporary_failed_data_leaves_nothing():
    prefix = unique_name("sbxtmpfail")
    with pytest.raises(ValueError):
        SharedDict.temporary({"bad": Unpicklable()}, size=1 << 20, prefix=prefix)
    assert [n for n in os.listdir("/dev/shm") if n.startswith(prefix)] == []


def test_temporary_is_unlinked_at_exit_but_not_by_a_forked_child():
    code = """
        import os, sys
        from sharedbox import SharedDict
        d = SharedDict.temporary(size=1 << 20)
        d["k"] = 1
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # runs the exit handlers in the child
        os.waitpid(pid, 0)
        print(d.name, os.path.exists("/dev/shm/" + d.name), d["k"])
    """  # the parent exits without closing d
    rc, out, err = run_python(code)
    assert rc == 0, err
    name, exists_after_child, value = out.split()
    assert exists_after_child == "True" and value == "1"
    assert not os.path.exists(shm_path(name))
