"""The per-handle cache of unpickled values (src/binding/value_cache.hpp).

Two properties, each of which a wrong cache would break:
* a read never returns a stale value once a write (from any process) has
  completed, even when the new value has the same size and type;
* a reader never sees another reader's mutation: dicts and lists come back
  as fresh copies, and values with mutable parts are not cached at all.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import sys

import pytest

from sharedbox import SharedDict
from sharedbox.errors import SharedDictClosedError

import helpers


def test_reads_after_another_process_writes_are_never_stale(sd):
    ctx = mp.get_context("spawn")
    requests, replies = ctx.Queue(), ctx.Queue()
    rounds = 200
    sd["k"] = {"round": -1, "name": "same-size"}
    assert sd["k"]["round"] == -1  # now cached in this handle
    proc = ctx.Process(target=helpers.cache_writer, args=(sd.name, rounds, requests, replies))
    proc.start()
    try:
        # Each kind twice in a row, so that a value cached by the earlier
        # round's reads meets a write of the same type and size.
        kinds = ("dict", "dict", "tuple", "str", "str", "int", "int", "short", "short",
                 "float", "float", "delete")
        for r in range(rounds):
            kind = kinds[r % len(kinds)]
            requests.put(kind)
            assert replies.get(timeout=60) == r
            # The write has completed: every read from now on sees it.
            for _ in range(3):
                if kind == "dict":
                    assert sd["k"] == {"round": r, "name": "same-size"}
                elif kind == "tuple":
                    assert sd["k"] == (r, "same-size")
                elif kind == "str":
                    assert sd["k"] == f"{r:06d}" + "s" * 1000
                elif kind == "int":
                    assert sd["k"] == 10**12 + r
                elif kind == "short":
                    assert sd["k"] == f"short-{r:06d}"
                elif kind == "float":
                    assert sd["k"] == r + 0.5
                else:
                    assert "k" not in sd and sd.get("k") is None
    finally:
        proc.join(timeout=60)
    assert proc.exitcode == 0


def test_a_readers_mutation_never_reaches_another_read(sd):
    sd["d"] = {"a": 1, "b": "x", "c": (1, 2)}
    sd["l"] = [1.5, "two", None]
    first = sd["d"]
    first["a"] = 99
    first["new"] = True
    assert sd["d"] == {"a": 1, "b": "x", "c": (1, 2)}
    assert sd["d"] is not sd["d"]
    lst = sd["l"]
    lst.append("more")
    lst[0] = 0
    assert sd["l"] == [1.5, "two", None]


def test_values_with_mutable_parts_are_read_afresh(sd):
    sd["nested"] = {"inner": [1, 2]}
    got = sd["nested"]
    got["inner"].append(3)
    assert sd["nested"] == {"inner": [1, 2]}
    sd["tuple_of_list"] = ([1],)
    t = sd["tuple_of_list"]
    t[0].append(2)
    assert sd["tuple_of_list"] == ([1],)
    sd["set"] = {1, 2}
    s = sd["set"]
    s.add(3)
    assert sd["set"] == {1, 2}


def test_immutable_values_are_shared_and_equal(sd):
    sd["t"] = (1, "a", (2.0, None), frozenset({1}))
    assert sd["t"] is sd["t"]  # served from the cache
    assert sd["t"] == (1, "a", (2.0, None), frozenset({1}))
    sd["t"] = (2,)
    assert sd["t"] == (2,)


def test_this_handles_own_writes_and_deletes(sd):
    sd["k"] = {"v": 1}
    assert sd["k"] == {"v": 1}
    sd["k"] = {"v": 2}
    assert sd["k"] == {"v": 2}
    del sd["k"]
    assert sd.get("k", "gone") == "gone"
    sd["k"] = {"v": 3}
    assert sd["k"] == {"v": 3}


def test_two_handles_in_one_process(name):
    a = SharedDict(name, size=1 << 20, max_keys=16)
    b = SharedDict(name, create=False)
    try:
        a["k"] = (1,)
        assert b["k"] == (1,)
        a["k"] = (2,)
        assert b["k"] == (2,)
        b["k"] = {"x": [1]}
        assert a["k"] == {"x": [1]}
    finally:
        b.close()
        a.close()
        a.unlink()


# -- small scalars: kept from their second read, checked by the publish sequence
@pytest.mark.parametrize("value", ["short", 10**12 + 7, 2.5, b"bytes", "x" * 200])
def test_a_small_value_is_kept_from_its_second_read(sd, value):
    sd["k"] = value
    first = sd["k"]
    assert first == value
    assert sys.getrefcount(first) == 2  # only `first` and the call's argument: not kept
    second = sd["k"]
    assert second == value and second is not first
    assert sys.getrefcount(second) == 3  # the cache holds it too
    assert sd["k"] is second  # answered from the cache
    sd["k"] = value  # the same value, written again: a new version
    again = sd["k"]
    assert again == value and again is not second


def test_a_scan_keeps_no_value(sd):
    # Values read once are not kept (no entry, no reference held), so a
    # handle that reads every key once costs no memory.
    for i in range(500):
        sd[f"k{i:03d}"] = f"value-{i}"
    got = [sd[f"k{i:03d}"] for i in range(500)]
    assert got == [f"value-{i}" for i in range(500)]
    # A value not kept has three references here: the list's, v's and the
    # argument's.  The doorkeeper is a bitmap indexed by hash, so a key whose
    # bit another key of the scan set first is kept on its first read: among
    # 500 keys and 2^20 bits that happens to about one run in eight, to one key.
    kept = [v for v in got if sys.getrefcount(v) != 3]
    assert len(kept) <= 3, kept


def test_writes_to_other_keys_leave_a_kept_value_current(sd):
    # Another key's write moves the publish sequence of its stripe; a kept
    # value of that stripe is then confirmed by its version and still served.
    sd["k"] = "kept"
    sd["k"]
    kept = sd["k"]
    for i in range(64):  # with max_keys=1000 some of these share k's stripe
        sd[f"other{i}"] = i
    assert sd["k"] is kept
    del sd["other0"]
    assert sd["k"] is kept
    sd["k"] = "changed"
    assert sd["k"] == "changed"
    del sd["k"]
    assert "k" not in sd and sd.get("k") is None


# -- containers handed out again (value_cache.hpp: one caller at a time) -------
def test_a_container_still_held_is_never_handed_out_again(sd):
    sd["l"] = [1.5, 2.5, "x"]
    sd["d"] = {"a": 1, "b": (2, 3)}
    for key in ("l", "d"):
        first = sd[key]
        second = sd[key]
        assert first is not second and first == second
        third = sd[key]  # both earlier ones are still held
        assert third is not first and third is not second and third == first


def test_a_container_dropped_unchanged_is_reused(sd):
    # The common loop (read, use, drop) copies nothing: the same object comes
    # back, equal to the stored value.
    sd["l"] = [0.5] * 50
    sd["d"] = {"k": "v", "n": 3}
    first = sd["l"]
    kept_id = id(first)
    del first
    again = sd["l"]
    assert id(again) == kept_id and again == [0.5] * 50
    if sys.version_info < (3, 12):  # dict version tags (PEP 509)
        first = sd["d"]
        kept_id = id(first)
        del first
        assert id(sd["d"]) == kept_id
    assert sd["d"] == {"k": "v", "n": 3}


@pytest.mark.parametrize("change", [
    lambda x: x.append(9.0),
    lambda x: x.pop(),
    lambda x: x.__setitem__(0, 7.25),
    lambda x: x.reverse(),
    lambda x: x.sort(),
    lambda x: x.clear(),
    # the same value in a new object at what may be the old object's address
    lambda x: (x.__delitem__(0), x.insert(0, float("3.75") + 0.0)),
    lambda x: x.__setitem__(slice(0, 2), [x[1], x[0]]),
])
def test_a_list_changed_and_dropped_is_never_handed_out(sd, change):
    stored = [3.75, 1.25, 2.5, 8.0]
    sd["l"] = stored
    for _ in range(3):
        got = sd["l"]
        change(got)
        del got
        assert sd["l"] == stored


@pytest.mark.parametrize("change", [
    lambda x: x.__setitem__("a", 99),
    lambda x: x.__setitem__("a", 1),  # the same object again: the dict is unchanged
    lambda x: x.pop("b"),
    lambda x: (x.clear(), x.update({"a": 1, "b": "two"})),
    lambda x: x.setdefault("c", 3),
    lambda x: x.update(a=5),
    lambda x: x.popitem(),
    lambda x: x.__ior__({"z": 0}),
])
def test_a_dict_changed_and_dropped_is_never_handed_out(sd, change):
    stored = {"a": 1, "b": "two"}
    sd["d"] = stored
    for _ in range(3):
        got = sd["d"]
        change(got)
        del got
        fresh = sd["d"]
        assert fresh == stored and list(fresh) == ["a", "b"]


# -- a finalizer that closes the handle while a read makes its copy ----------
# The copies a cached read makes allocate, so the cyclic GC can run inside
# them, and with it a finalizer that closes the handle (dropping the caches
# under the read).  With the GC threshold at 1, cyclic garbage made just
# before a read is collected at one of the next GC-tracked allocations;
# each test retries until that allocation was inside the read, which the
# finalizer sees from a flag set around the read alone.
_inside_read = [False]
_closed_inside = []


class _ClosesOnCollect:
    def __init__(self, d):
        self.d = d
        self.me = self

    def __del__(self):
        _closed_inside.append(_inside_read[0])
        self.d.close()


def _read_while_collecting(name, read):
    """Runs read(d) until the finalizer closed d inside it; returns its result."""
    old = gc.get_threshold()
    try:
        for _ in range(200):
            d = SharedDict(name, create=False)
            read(d)  # fills the caches
            del _closed_inside[:]
            gc.collect()
            gc.set_threshold(1)
            _ClosesOnCollect(d)
            try:
                _inside_read[0] = True
                got = read(d)
            except SharedDictClosedError:
                got = None
            finally:
                _inside_read[0] = False
                gc.set_threshold(*old)
            gc.collect()
            assert d.is_closed()
            if _closed_inside == [True]:
                return got
        raise AssertionError("the GC never ran inside the read")
    finally:
        gc.set_threshold(*old)


def test_an_items_walk_survives_the_cache_being_dropped_while_it_copies(name):
    d = SharedDict(name, size=4 << 20, max_keys=100)
    for i in range(20):
        d[f"k{i}"] = {"n": i}  # containers: every cached walk copies them
    d.close()
    got = _read_while_collecting(name, lambda h: list(h.items()))
    assert got is None  # the next stripe after the close raises the closed error
