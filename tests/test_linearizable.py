"""Linearizability under concurrency: random programs from several processes.

Hypothesis draws one program per process (single-key operations on a few shared
keys); the processes run them at once from a barrier, recording for each
operation its invocation and response times (CLOCK_MONOTONIC, common to all
processes) and its result.  Linearizability is local (Herlihy & Wing): a history
is linearizable iff its restriction to each object is, and each key of a dict is
an independent register.  So each key's history is checked on its own by
exhaustive search (Wing & Gong): some order of its operations, consistent with
real time, must explain every result.
"""

import multiprocessing as mp
import time
from functools import lru_cache

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from conftest import remove_segment, unique_name
from sharedbox import SharedDict

KEYS = ["a", "b", "c"]
MISSING = "<missing>"

OPS = st.tuples(
    st.sampled_from(["set", "get", "delete", "pop", "setdefault", "contains"]),
    st.sampled_from(KEYS),
)
PROGRAMS = st.lists(st.lists(OPS, min_size=4, max_size=12), min_size=3, max_size=3)


def run_program(name, worker, program, barrier, start_at, out):
    d = SharedDict(name, create=False)
    barrier.wait()
    # Spin to a common start instant: a barrier alone releases processes
    # hundreds of microseconds apart, longer than a whole program takes.
    while time.monotonic_ns() < start_at.value:
        pass
    history = []
    for i, (op, key) in enumerate(program):
        arg = worker * 1000 + i  # every written value is unique
        start = time.monotonic_ns()
        if op == "set":
            d[key] = arg
            result = None
        elif op == "get":
            result = d.get(key, MISSING)
        elif op == "delete":
            try:
                del d[key]
                result = True
            except KeyError:
                result = False
        elif op == "pop":
            result = d.pop(key, MISSING)
        elif op == "setdefault":
            result = d.setdefault(key, arg)
        else:
            result = key in d
        history.append((op, key, arg, result, start, time.monotonic_ns()))
    out.put(history)
    d.close()


def apply(op, arg, state):
    """(expected result, new state) of op on a register holding state."""
    if op == "set":
        return None, arg
    if op == "get":
        return state, state
    if op == "delete":
        return state != MISSING, MISSING
    if op == "pop":
        return state, MISSING
    if op == "setdefault":
        return (state, state) if state != MISSING else (arg, arg)
    return state != MISSING, state  # contains


def linearizable(ops):
    """ops: [(op, arg, result, start, end)] of one key, initially MISSING."""
    ops = tuple(ops)

    @lru_cache(maxsize=None)
    def search(remaining, state):
        if not remaining:
            return True
        earliest_end = min(ops[i][4] for i in remaining)
        for i in remaining:
            op, arg, result, start, _ = ops[i]
            if start > earliest_end:
                continue  # some remaining op finished before this one began
            expected, new_state = apply(op, arg, state)
            if expected == result and search(remaining - {i}, new_state):
                return True
        return False

    return search(frozenset(range(len(ops))), MISSING)


def test_checker_rejects_a_stale_read():
    # set(1) finishes before get starts, yet get saw nothing: not linearizable.
    assert not linearizable([("set", 1, None, 0, 10), ("get", 0, MISSING, 20, 30)])
    assert linearizable([("set", 1, None, 0, 10), ("get", 0, MISSING, 5, 30)])
    assert not linearizable([("pop", 0, 7, 0, 10)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PROGRAMS)
def test_concurrent_histories_are_linearizable(programs):
    ctx = mp.get_context("fork")
    name = unique_name("lin")
    d = SharedDict(name, size=1 << 20, max_keys=16, stripes=2)
    try:
        barrier = ctx.Barrier(len(programs) + 1)
        start_at = ctx.Value("q", 0)
        out = ctx.Queue()
        procs = [
            ctx.Process(target=run_program, args=(name, w, prog, barrier, start_at, out))
            for w, prog in enumerate(programs)
        ]
        for p in procs:
            p.start()
        start_at.value = time.monotonic_ns() + 20_000_000
        barrier.wait()
        histories = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * len(procs)
        for key in KEYS:
            ops = [(op, arg, result, s, e) for h in histories for (op, k, arg, result, s, e) in h
                   if k == key]
            assert linearizable(ops), (key, sorted(ops, key=lambda o: o[3]))
        final = {k: d.get(k, MISSING) for k in KEYS}
        assert len(d) == sum(v != MISSING for v in final.values())
        assert d._check_integrity() == []
    finally:
        d.close()
        remove_segment(name)
