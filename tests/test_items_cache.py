"""The per-handle cache of each stripe's (key, value) pairs
(src/binding/items_cache.hpp), which items() and values() walk.

A wrong cache would break one of these, each checked here:
* items() never returns a stale pair once a write from any process has
  completed: an overwrite with a value of the same size and type, an insert,
  a delete;
* nor once this process has seen the write's effect through d[key];
* a reader never sees another reader's mutation: containers come back as
  fresh copies, values with mutable parts are decoded afresh, and the list
  returned is the caller's own.
"""

from __future__ import annotations

import multiprocessing as mp

from sharedbox import SharedDict

import helpers


def expected_after(r, kind, model):
    if kind == "overwrite":
        model[f"k{r % 50:03d}"] = r % 10
    elif kind == "insert":
        model[f"new{r:05d}"] = r
    elif kind == "delete":
        del model[f"new{r - 1:05d}"]
    elif kind == "container":
        model["box"] = {"round": r % 10, "tags": ("a", "b")}


def test_items_after_another_process_writes_are_never_stale(sd):
    model = {f"k{i:03d}": 0 for i in range(50)}
    model["box"] = {"round": -1, "tags": ("a", "b")}
    sd.update(model)
    assert dict(sd.items()) == model  # every stripe now cached in this handle
    ctx = mp.get_context("spawn")
    requests, replies = ctx.Queue(), ctx.Queue()
    kinds = ("overwrite", "insert", "delete", "container")
    rounds = 240
    proc = ctx.Process(target=helpers.items_writer, args=(sd.name, rounds, requests, replies))
    proc.start()
    try:
        for r in range(rounds):
            kind = kinds[r % 4]
            requests.put(kind)
            assert replies.get(timeout=60) == r
            expected_after(r, kind, model)
            # The change has completed: every walk from now on sees it.
            for _ in range(2):
                assert dict(sd.items()) == model
                assert sorted(sd.values(), key=repr) == sorted(model.values(), key=repr)
                assert len(list(sd.items())) == len(model)
    finally:
        proc.join(timeout=60)
    assert proc.exitcode == 0


def test_items_see_what_a_get_has_seen(sd):
    # Writes by this handle and by a second handle in the same process: a
    # walk after d[key] has returned the new value shows the new value too.
    other = SharedDict(sd.name, create=False)
    try:
        for i in range(40):
            sd[f"k{i}"] = 0
        assert dict(sd.items())["k7"] == 0
        for r in range(1, 30):
            other[f"k{r % 40}"] = r
            assert sd[f"k{r % 40}"] == r
            assert dict(sd.items())[f"k{r % 40}"] == r
            sd[f"k{(r + 1) % 40}"] = -r
            assert dict(sd.items())[f"k{(r + 1) % 40}"] == -r
    finally:
        other.close()


def test_a_walkers_mutation_never_reaches_another_walk(sd):
    sd["d"] = {"a": 1, "b": "x"}
    sd["l"] = [1.5, "two"]
    sd["t"] = (1, "a")
    first = dict(sd.items())
    first["d"]["a"] = 99
    first["l"].append("more")
    again = dict(sd.items())
    assert again == {"d": {"a": 1, "b": "x"}, "l": [1.5, "two"], "t": (1, "a")}
    assert again["d"] is not first["d"] and again["l"] is not first["l"]
    assert again["t"] is first["t"]  # immutable: shared with the cache
    # A value with a container inside a container is not kept at all, and
    # makes its stripe not kept (so "t" is not checked for identity here: it
    # may share that stripe, one chance in sd.stripes).
    sd["nested"] = {"inner": [1, 2]}
    first = dict(sd.items())
    first["nested"]["inner"].append(3)
    first["d"]["a"] = 98
    again = dict(sd.items())
    assert again == {"d": {"a": 1, "b": "x"}, "l": [1.5, "two"],
                     "nested": {"inner": [1, 2]}, "t": (1, "a")}
    assert again["nested"]["inner"] is not first["nested"]["inner"]
    for value in sd.values():
        if isinstance(value, list):
            value.clear()
    assert sd["l"] == [1.5, "two"] and dict(sd.items())["l"] == [1.5, "two"]


def test_the_list_of_a_stripe_is_the_callers_own(sd):
    for i in range(20):
        sd[f"k{i}"] = i
    stripe = next(s for s in range(sd.stripes) if sd._stripe_items(s))
    mine = sd._stripe_items(stripe)
    before = list(mine)
    mine.clear()
    mine.append(("bogus", -1))
    assert sd._stripe_items(stripe) == before


def test_items_of_large_values_and_after_close(name):
    d = SharedDict(name, size=16 << 20, max_keys=100)
    try:
        big = "x" * (1 << 20)  # read after the stripe walk, by get(): never kept
        d["big"] = big
        d["small"] = 1
        assert dict(d.items()) == {"big": big, "small": 1}
        d["big"] = "y" * (1 << 20)
        assert dict(d.items()) == {"big": "y" * (1 << 20), "small": 1}
    finally:
        d.close()
    other = SharedDict(name, create=False)
    try:
        assert dict(other.items())["small"] == 1
    finally:
        other.close()
