"""The per-handle cache of unpickled values (src/binding/value_cache.hpp).

Two properties, each of which a wrong cache would break:
* a read never returns a stale value once a write (from any process) has
  completed, even when the new value has the same size and type;
* a reader never sees another reader's mutation: dicts and lists come back
  as fresh copies, and values with mutable parts are not cached at all.
"""

from __future__ import annotations

import multiprocessing as mp

from sharedbox import SharedDict

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
        for r in range(rounds):
            kind = ("dict", "tuple", "str", "delete")[r % 4]
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
