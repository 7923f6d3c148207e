"""One benchmark process: `python -m benchmarks.worker '<job json>'`.

The parent (benchmarks/run.py) starts one owner process per (job, system),
which creates the store and times the writes, then one or more other
processes that attach to it and time the reads: a value is always read by a
process other than the one that wrote it.

Protocol: the worker prints events as lines ``@@{json}`` on stdout (other
output is ignored) and reads commands, one per line, from stdin.
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
import traceback
import zlib

from benchmarks import systems

KINDS = ("str", "int", "dict")


# -- the data every process derives from the job, so nothing is shipped -----
def small_keys(kind: str, n: int) -> list:
    return [f"{kind}:{i:07d}" for i in range(n)]


def small_values(kind: str, n: int, round_: int) -> list:
    if kind == "str":
        return [f"value-{i:07d}-r{round_}" for i in range(n)]
    if kind == "int":
        return [i * 1_000_003 + round_ for i in range(n)]  # beyond the small-int cache
    return [{"id": i, "round": round_, "name": f"sensor-{i}", "ok": True} for i in range(n)]


def expected_value(kind: str, i: int, ops: int, repeats: int):
    """After the owner's timed set rounds: the first `ops` keys hold round
    `repeats`, the rest still hold round 0."""
    return small_values(kind, i + 1, repeats if i < ops else 0)[i]


def ops_for(job: dict, system: systems.System) -> int:
    """Operations per timed loop: all n keys, or 1/slow_factor of them for
    systems whose every operation costs milliseconds (at least min_ops)."""
    return max(job["min_ops"], job["n"] // system.slow_factor)


def emit(event: str, **data) -> None:
    sys.stdout.write("@@" + json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def command() -> str:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(0)  # the parent went away
    return line.strip()


def timed(fn, *args):
    """(nanoseconds, result) of one call, with the cyclic GC off as timeit does."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        result = fn(*args)
        return time.perf_counter_ns() - t0, result
    finally:
        gc.enable()


def per_op(fn, args, ops: int, repeats: int, check=None) -> list:
    """Per-operation times of `repeats` timed calls of fn, after one untimed
    call: a process's first pass over its keys pays page faults and cold
    caches (2-3x a later pass here, for an in-process dict as much as for a
    shared store), which is not what a per-operation row reports."""
    result = fn(*args)
    if check is not None:
        check(result)
    samples = []
    for _ in range(repeats):
        ns, result = timed(fn, *args)
        if check is not None:
            check(result)
        samples.append(ns / ops)
    return samples


def require(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"wrong result: {what}")


# -- small operations --------------------------------------------------------
def load_small(system, job, final: bool) -> None:
    """The data the owner leaves behind (final) or starts with (not final)."""
    ops = ops_for(job, system)
    for kind in KINDS:
        keys = small_keys(kind, job["n"])
        system.fill(keys, small_values(kind, job["n"], 0))
        if final:
            system.fill(keys[:ops], small_values(kind, ops, job["repeats"]))


def owner_small(system, job) -> None:
    repeats = job["repeats"]
    ops = ops_for(job, system)
    load_small(system, job, final=False)
    results = {}
    for kind in KINDS:
        keys = small_keys(kind, ops)
        samples = []
        for round_ in range(1, repeats + 1):
            values = small_values(kind, ops, round_)
            ns, _ = timed(system.set_loop, keys, values)
            samples.append(ns / ops)
        results[f"set_{kind}"] = samples
    emit("ready", results=results, ops=ops)

    require(command() == "delete", "protocol")
    keys = small_keys("str", ops)
    values = small_values("str", ops, repeats)
    samples = []
    for _ in range(repeats):
        ns, _ = timed(system.delete_loop, keys)
        samples.append(ns / ops)
        system.fill(keys, values)
    emit("result", results={"delete": samples})


def reader_small(system, job) -> None:
    repeats = job["repeats"]
    ops = ops_for(job, system)
    if not system.shared:
        load_small(system, job, final=True)
    order = list(range(ops))
    random.Random(7).shuffle(order)
    results = {}
    for kind in KINDS:
        all_keys = small_keys(kind, job["n"])
        keys = [all_keys[i] for i in order]
        want = expected_value(kind, order[-1], ops, repeats)
        results[f"get_{kind}"] = per_op(
            system.get_loop, (keys,), ops, repeats,
            check=lambda v, want=want, kind=kind: require(v == want, f"get_{kind}"),
        )
    all_str_keys = small_keys("str", job["n"])
    str_keys = [all_str_keys[i] for i in order]
    results["contains_hit"] = per_op(
        system.contains_loop, (str_keys,), ops, repeats,
        check=lambda hits: require(hits == ops, "contains hit"),
    )
    missing = [f"missing:{i:07d}" for i in order]
    results["contains_miss"] = per_op(
        system.contains_loop, (missing,), ops, repeats,
        check=lambda hits: require(hits == 0, "contains miss"),
    )
    rng = random.Random(11)
    mix = [
        (k, None if rng.random() < 0.9 else f"mixed-{i}") for i, k in enumerate(str_keys)
    ]
    results["mix_90_10"] = per_op(system.mix_loop, (mix,), ops, repeats)
    if system.shared:
        samples = []
        for _ in range(repeats):
            other = systems.make(job["system"])
            t0 = time.perf_counter_ns()
            other.attach(job["name"], job)
            samples.append(time.perf_counter_ns() - t0)
            other.close()
        results["attach"] = samples
    emit("result", results=results)


# -- iteration -----------------------------------------------------------------
# Every way a user walks the store, each a timed loop of its own (systems.py):
# metric -> the system's loop.  "iterate" is `for k in d.keys()`, the job's one
# row before the others were added; the name is kept so that --compare matches
# older results files.
ITER_LOOPS = {"iter": "iter_loop", "iterate": "keys_loop", "items": "items_loop"}


def iter_keys(count: int) -> list:
    return [f"it:{i:07d}" for i in range(count)]


def owner_iterate(system, job) -> None:
    """Key it:i holds the int i."""
    keys = iter_keys(job["iter_keys"])
    system.fill(keys, list(range(len(keys))))
    emit("ready", results={})


def check_iteration(metric: str, got, count: int) -> None:
    """A key loop returns how many keys it saw.  items_loop returns (keys
    seen, sum of the values, last key, its value): every key seen once with
    the value the owner wrote (the sum is 0 + 1 + ... + count-1), and the last
    pair belongs together."""
    if metric != "items":
        require(got == count, f"{metric}: iterated {got} of {count} keys")
        return
    n, total, key, value = got
    require(n == count, f"items: {n} of {count} keys")
    require(total == count * (count - 1) // 2, f"items: the values sum to {total}")
    require(key == f"it:{value:07d}", f"items: {key!r} holds {value!r}")


def reader_iterate(system, job) -> None:
    count = job["iter_keys"]
    if not system.shared:
        system.fill(iter_keys(count), list(range(count)))
    results = {}
    for metric, loop in ITER_LOOPS.items():
        if getattr(system, loop) is None:  # no such way: the table shows "—"
            continue
        results[metric] = per_op(
            getattr(system, loop), (), count, job["iter_repeats"],
            check=lambda got, metric=metric: check_iteration(metric, got, count),
        )
    # len(d) per call; slow systems make fewer calls (a round trip, or a read
    # of the whole store, each)
    calls = max(job["min_ops"], job["len_calls"] // system.slow_factor)
    results["len"] = per_op(
        system.len_loop, (calls,), calls, job["repeats"],
        check=lambda n: require(n == count, f"len: {n}, not {count}"),
    )
    emit("result", results=results)


# -- NumPy arrays ----------------------------------------------------------------
def _array(nbytes: int):
    import numpy as np

    return np.random.default_rng(nbytes).random(nbytes // 8)


def _bandwidth(samples_ns: list, nbytes: int) -> list:
    return [nbytes / ns for ns in samples_ns]  # bytes per ns == GB/s


def _copy_floor(arr, repeats: int) -> list:
    return _bandwidth([timed(arr.copy)[0] for _ in range(repeats)], arr.nbytes)


def owner_numpy(system, job) -> None:
    results = {}
    for mib in job["array_mib"]:
        arr = _array(mib << 20)
        results[f"copy_w_{mib}MiB"] = _copy_floor(arr, job["repeats"])
        samples = [timed(system.set_array, f"a{mib}", arr)[0] for _ in range(job["repeats"])]
        results[f"set_{mib}MiB"] = _bandwidth(samples, arr.nbytes)
    emit("ready", results=results)


def reader_numpy(system, job) -> None:
    import numpy as np

    results = {}
    for mib in job["array_mib"]:
        arr = _array(mib << 20)
        results[f"copy_r_{mib}MiB"] = _copy_floor(arr, job["repeats"])
        samples = []
        for _ in range(job["repeats"]):
            ns, got = timed(system.get_array, f"a{mib}", arr.shape, arr.dtype)
            require(got.shape == arr.shape and np.array_equal(got[::4099], arr[::4099]), "array")
            samples.append(ns)
            del got
        results[f"get_{mib}MiB"] = _bandwidth(samples, arr.nbytes)
    emit("result", results=results)


# -- scaling over processes --------------------------------------------------------
def owner_scale(system, job) -> None:
    keys = small_keys("str", job["n"])
    system.fill(keys, small_values("str", job["n"], 0))
    emit("ready", results={})


def scaler(system, job) -> None:
    """A reader (or writer) that runs timed bursts whenever told 'go'."""
    index = job["index"]
    writing = job["role"] == "scale_writer"
    if writing:
        keys = [f"w{index}:{i:06d}" for i in range(job["scale_keys"])]
        values = [f"value-{i:07d}-w{index}" for i in range(len(keys))]
        system.fill(keys, values)
    else:
        keys = small_keys("str", job["n"])
        if not system.shared:
            system.fill(keys, small_values("str", job["n"], 0))
        random.Random(index).shuffle(keys)
    chunk = 500
    chunks = [keys[i:i + chunk] for i in range(0, len(keys), chunk)]
    emit("attached")
    while True:
        cmd = command().split()
        if cmd[0] == "stop":
            break
        seconds = float(cmd[1])
        done, i = 0, 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            part = chunks[i % len(chunks)]
            if writing:
                system.set_loop(part, values[:len(part)])
            else:
                system.get_loop(part)
            done += len(part)
            i += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        emit("burst", ops=done, seconds=now - t0)
    system.close()


# -- RedisDict against hand-written redis-py -------------------------------------
def owner_redisdict(system, job) -> None:
    """Sets through RedisDict and through hand-written redis-py, alternated
    round by round; then update() of bulk_keys keys against a loop of
    d[k] = v over the same keys, also alternated."""
    repeats = job["repeats"]
    ops = ops_for(job, system)
    for kind in KINDS:
        keys = small_keys(kind, job["n"])
        values = small_values(kind, job["n"], 0)
        system.fill(keys, values)
        system.hand_fill(keys, values)
    results: dict = {}
    for kind in KINDS:
        keys = small_keys(kind, ops)
        for round_ in range(1, repeats + 1):
            values = small_values(kind, ops, round_)
            for metric, fn in ((f"set_{kind}", system.set_loop),
                               (f"hand_set_{kind}", system.hand_set_loop)):
                results.setdefault(metric, []).append(timed(fn, keys, values)[0] / ops)
    count = job["bulk_keys"]
    keys = [f"bulk:{i:06d}" for i in range(count)]
    for r in range(repeats):
        values = small_values("str", count, r)
        for metric, fn in (("update_bulk", system.bulk_update),
                           ("loop_set_bulk", system.bulk_set_loop)):
            results.setdefault(metric, []).append(timed(fn, keys, values)[0] / count)
    emit("ready", results=results, ops=ops)


def reader_redisdict(system, job) -> None:
    """Gets in random order through both, alternated; then list(d.items())
    of bulk_keys keys against [(k, d[k]) for k in keys], alternated."""
    repeats = job["repeats"]
    ops = ops_for(job, system)
    order = list(range(ops))
    random.Random(7).shuffle(order)
    results: dict = {}
    for kind in KINDS:
        all_keys = small_keys(kind, job["n"])
        keys = [all_keys[i] for i in order]
        want = expected_value(kind, order[-1], ops, repeats)
        for _ in range(repeats):
            for metric, fn in ((f"get_{kind}", system.get_loop),
                               (f"hand_get_{kind}", system.hand_get_loop)):
                ns, got = timed(fn, keys)
                require(got == want, metric)
                results.setdefault(metric, []).append(ns / ops)
    count = job["bulk_keys"]
    keys = [f"bulk:{i:06d}" for i in range(count)]
    for _ in range(repeats):
        for metric, fn, args in (("items_bulk", system.bulk_items, ()),
                                 ("loop_get_bulk", system.bulk_get_loop, (keys,))):
            ns, n = timed(fn, *args)
            require(n == count, f"{metric}: {n} of {count}")
            results.setdefault(metric, []).append(ns / count)
    emit("result", results=results)


ROLES = {
    ("owner", "small"): owner_small,
    ("reader", "small"): reader_small,
    ("owner", "iterate"): owner_iterate,
    ("reader", "iterate"): reader_iterate,
    ("owner", "numpy"): owner_numpy,
    ("reader", "numpy"): reader_numpy,
    ("owner", "scale_read"): owner_scale,
    ("owner", "scale_write"): owner_scale,
    ("scale_reader", "scale_read"): scaler,
    ("scale_writer", "scale_write"): scaler,
    ("owner", "redisdict"): owner_redisdict,
    ("reader", "redisdict"): reader_redisdict,
}


# -- coordination: one counter from many processes (job "incr") -----------------
COUNTER = "counter"


def owner_incr(system, job) -> None:
    """Creates the counter, then resets it and reports its total when told,
    so that the parent can check every run's final total."""
    system.incr_reset(COUNTER)
    emit("ready", results={})
    while True:
        cmd = command()
        if cmd == "reset":
            system.incr_reset(COUNTER)
            emit("reset")
        elif cmd == "total":
            emit("total", total=system.incr_total(COUNTER))
        else:
            require(cmd == "end", f"protocol: {cmd!r}")
            return


def incrementer(system, job) -> None:
    """On 'go VARIANT N START_NS': waits until CLOCK_MONOTONIC reaches
    START_NS (the same moment in every process of the group), then increments
    the counter N times the variant's way."""
    emit("attached")
    while True:
        cmd = command().split()
        if cmd[0] == "stop":
            break
        variant, n, start = cmd[1], int(cmd[2]), int(cmd[3])
        loop = getattr(system, f"incr_{variant}_loop")
        gc.collect()
        gc.disable()
        try:
            while time.monotonic_ns() < start:
                time.sleep(0.0005)
            t0 = time.monotonic_ns()
            loop(COUNTER, n)
            t1 = time.monotonic_ns()
        finally:
            gc.enable()
        emit("burst", ops=n, t0=t0, t1=t1)
    system.close()


# -- coordination: how soon a waiter sees a set, and what waiting costs (job "wait")
def _percentile(sorted_values: list, q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def owner_wait(system, job) -> None:
    """The setter of the ping-pong.  On 'ping ROUNDS': ROUNDS times, sleeps a
    random 0.1-1.1 ms (so that the waiter is asleep, at a random phase of a
    polling loop), stores CLOCK_MONOTONIC in ns as the value of "ping", and
    waits for the waiter's "ack", so that every change is observed."""
    d = system.d
    rng = random.Random(5)
    emit("ready", results={})
    while True:
        cmd = command().split()
        if cmd[0] == "end":
            return
        require(cmd[0] == "ping", f"protocol: {cmd!r}")
        rounds = int(cmd[1])
        v_ack = d.version("ack")
        emit("armed")
        d.wait("ack", v_ack, timeout=60)  # the waiter is ready
        for _ in range(rounds):
            v_ack = d.version("ack")  # before the set, so no ack is missed
            time.sleep(rng.uniform(0.0001, 0.0011))
            d["ping"] = time.monotonic_ns()
            d.wait("ack", v_ack, timeout=60)
        emit("pinged")


def waiter(system, job) -> None:
    """On 'pong MODE ROUNDS': sees ROUNDS changes of "ping", either with
    d.wait (the version taken before the read) or with a 1 ms polling loop,
    and records CLOCK_MONOTONIC at the return minus the setter's stamp.
    On 'idle MODE SECONDS': the CPU time of waiting SECONDS for a key that
    never changes (process_time and voluntary context switches)."""
    import resource

    d = system.d
    emit("attached")
    while True:
        cmd = command().split()
        if cmd[0] == "stop":
            break
        if cmd[0] == "pong":
            mode, rounds = cmd[1], int(cmd[2])
            lat = []
            gc.collect()
            gc.disable()
            try:
                if mode == "wait":
                    v = d.version("ping")
                    d["ack"] = -1  # ready
                    for i in range(rounds):
                        v = d.wait("ping", v, timeout=60)
                        t = time.monotonic_ns()
                        lat.append(t - d["ping"])
                        d["ack"] = i
                else:
                    old = d.get("ping")
                    d["ack"] = -1
                    for i in range(rounds):
                        while d.get("ping") == old:
                            time.sleep(0.001)
                        t = time.monotonic_ns()
                        old = d["ping"]
                        lat.append(t - old)
                        d["ack"] = i
            finally:
                gc.enable()
            lat.sort()
            require(len(lat) == rounds and lat[0] > 0, "latencies")
            emit("latencies", median=_percentile(lat, 0.5), p99=_percentile(lat, 0.99),
                 max=lat[-1], rounds=rounds)
        else:
            require(cmd[0] == "idle", f"protocol: {cmd!r}")
            mode, seconds = cmd[1], float(cmd[2])
            key = "idle"
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            c0, w0 = time.process_time_ns(), time.monotonic()
            if mode == "wait":
                try:
                    d.wait(key, d.version(key), timeout=seconds)
                    raise AssertionError("the idle key changed")
                except TimeoutError:
                    pass
            elif mode == "poll":
                old = d.get(key)
                deadline = w0 + seconds
                while d.get(key) == old and time.monotonic() < deadline:
                    time.sleep(0.001)
            else:  # "sleep": what the machine charges for one sleep, the floor
                time.sleep(seconds)
            cpu, wall = time.process_time_ns() - c0, time.monotonic() - w0
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            emit("idle", cpu_ns=cpu, seconds=wall, switches=ru1.ru_nvcsw - ru0.ru_nvcsw)
    system.close()


# -- small operations on pickled values (job "small_kib") ------------------------
# The same protocol and checks as the small job, over four more value kinds:
# a 1 KiB str, a dict of 30 str fields and an int (about 1 KiB pickled), a
# list of 100 floats and a 3-tuple (int, str, float).  A job of its own, so
# that the ~60 MB it stores does not change the figures of the small job
# (shared-memory-dict re-reads its whole store on every operation).  The job
# keeps its first name, so that --compare matches older results files.
KIB_KINDS = ("str1k", "pdict1k", "floats100", "tuple3")


def kib_values(kind: str, n: int, round_: int) -> list:
    if kind == "tuple3":
        return [(i, f"t{i:07d}-r{round_}", i * 0.5 + round_) for i in range(n)]
    if kind == "str1k":
        return [(f"s{i:07d}r{round_:03d}." * 80)[:1024] for i in range(n)]
    if kind == "pdict1k":
        out = []
        for i in range(n):
            d = {f"field_{j:02d}": f"v{i:07d}-{j:02d}-r{round_:03d}-abcd" for j in range(30)}
            d["n"] = i * 1_000_003 + round_
            out.append(d)
        return out
    return [[i + j / 128 + round_ for j in range(100)] for i in range(n)]


def load_kib(system, job, final: bool) -> None:
    ops = ops_for(job, system)
    for kind in KIB_KINDS:
        keys = small_keys(kind, job["n"])
        system.fill(keys, kib_values(kind, job["n"], 0))
        if final:
            system.fill(keys[:ops], kib_values(kind, ops, job["repeats"]))


def owner_small_kib(system, job) -> None:
    repeats = job["repeats"]
    ops = ops_for(job, system)
    load_kib(system, job, final=False)
    results = {}
    for kind in KIB_KINDS:
        keys = small_keys(kind, ops)
        samples = []
        for round_ in range(1, repeats + 1):
            values = kib_values(kind, ops, round_)
            ns, _ = timed(system.set_loop, keys, values)
            samples.append(ns / ops)
        results[f"set_{kind}"] = samples
    emit("ready", results=results, ops=ops)


def reader_small_kib(system, job) -> None:
    repeats = job["repeats"]
    ops = ops_for(job, system)
    if not system.shared:
        load_kib(system, job, final=True)
    order = list(range(ops))
    random.Random(7).shuffle(order)
    results = {}
    for kind in KIB_KINDS:
        all_keys = small_keys(kind, job["n"])
        keys = [all_keys[i] for i in order]
        last = order[-1]
        want = kib_values(kind, last + 1, repeats if last < ops else 0)[last]
        results[f"get_{kind}"] = per_op(
            system.get_loop, (keys,), ops, repeats,
            check=lambda v, want=want, kind=kind: require(v == want, f"get_{kind}"),
        )
    emit("result", results=results)


# -- one hot key: 2 readers while a third process overwrites it (job "hotkey") -----
HOT = "hot"


def hot_value(seq: int) -> str:
    """A 128-char str that carries its own checksum: a torn or mixed read
    fails the check (and the sequence number must never go backwards)."""
    body = f"{seq:016d}|" * 6
    return f"{body}{zlib.crc32(body.encode()):08x}" + "." * (128 - 102 - 8)


def hot_check(value, last_seq: int) -> int:
    """The value's sequence number; -1 if it is not whole (torn), -2 if it
    is older than the value read before it (stale)."""
    if not isinstance(value, str) or len(value) != 128:
        return -1
    body = value[:102]
    if value[102:110] != f"{zlib.crc32(body.encode()):08x}":
        return -1
    try:
        seq = int(body[:16])
    except ValueError:
        return -1
    if body != f"{seq:016d}|" * 6:
        return -1
    return seq if seq >= last_seq else -2


def owner_hotkey(system, job) -> None:
    system.set_loop([HOT], [hot_value(0)])
    emit("ready", results={})


def hot_writer(system, job) -> None:
    """On 'write': overwrites the hot key with ever newer values until 'stop'
    arrives on stdin (read by a thread, so the loop itself stays tight)."""
    import threading

    emit("attached")
    require(command() == "write", "protocol")
    stop = threading.Event()

    def wait_stop():
        command()
        stop.set()

    threading.Thread(target=wait_stop, daemon=True).start()
    seq = 1
    t0 = time.perf_counter()
    batch = 50
    while not stop.is_set():
        values = [hot_value(s) for s in range(seq, seq + batch)]
        system.set_loop([HOT] * batch, values)
        seq += batch
    emit("written", writes=seq - 1, seconds=time.perf_counter() - t0)
    system.close()


def hot_reader(system, job) -> None:
    """On 'go SECONDS': reads the hot key in chunks of 500 for SECONDS and
    reports reads, the time spent in the read loops (checking every value is
    done between chunks, off the clock), the values that were not whole and
    the number of distinct values seen."""
    emit("attached")
    chunk = 500
    keys = [HOT] * chunk
    while True:
        cmd = command().split()
        if cmd[0] == "stop":
            break
        seconds = float(cmd[1])
        done, spent, bad, stale, last, seen = 0, 0, 0, 0, -1, 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter_ns()
            try:
                values = system.read_many(keys)
            except Exception:  # a torn value that does not even decode
                spent += time.perf_counter_ns() - t0
                bad += 1
                continue
            spent += time.perf_counter_ns() - t0
            done += len(values)
            for v in values:
                seq = hot_check(v, last)
                if seq == -1:
                    bad += 1
                elif seq == -2:
                    stale += 1
                elif seq != last:
                    seen += 1
                    last = seq
        emit("burst", ops=done, seconds=spent / 1e9, bad=bad, stale=stale, seen=seen)
    system.close()


# -- one store of many value kinds against stores of one kind (job "mixed") -------
MIXED_KINDS = ("int", "dict", "floats100", "tuple3", "str1k", "pdict1k")


def mixed_values(kind: str, n: int, round_: int) -> list:
    return small_values(kind, n, round_) if kind in KINDS else kib_values(kind, n, round_)


def owner_mixed(system, job) -> None:
    """One store holding n keys of each of MIXED_KINDS, and for each kind a
    store of its own holding only that kind's n keys (same keys, same
    values).  Each round overwrites every kind's keys with new values, timing
    the pass in the mixed store and then the same pass in the kind's own
    store.  All in this one process."""
    n = job["mixed_n"]
    base = job["name"]
    stores = {}
    values0 = {kind: mixed_values(kind, n, 0) for kind in MIXED_KINDS}
    keys = {kind: small_keys(kind, n) for kind in MIXED_KINDS}
    for kind in MIXED_KINDS:
        system.fill(keys[kind], values0[kind])
    del values0
    for kind in MIXED_KINDS:
        other = systems.make(job["system"])
        other.create(f"{base}_k{MIXED_KINDS.index(kind)}", job)
        other.fill(keys[kind], mixed_values(kind, n, 0))
        stores[kind] = other
    results: dict = {}
    for round_ in range(1, job["repeats"] + 1):
        for kind in MIXED_KINDS:
            # Both passes use the same key objects, so whichever runs second
            # finds them in the CPU cache: each round runs mixed, single,
            # single, mixed (ABBA), and each side's figures hold both orders.
            # The round's first pass of a kind follows the previous kind's
            # passes (for int, 1 KiB dicts: tens of MB), which leave its
            # store's lines out of the caches; odd rounds give that pass to
            # the mixed store and even rounds to the single one (BAAB), so
            # neither side takes every cold start.
            order = ("mixed", "single", "single", "mixed")
            for where in order if round_ % 2 else order[::-1]:
                # each pass gets its own value objects: the in-process dict
                # keeps the objects themselves, and shared ones would die in
                # whichever pass dropped their last reference
                values = mixed_values(kind, n, round_)
                d = system if where == "mixed" else stores[kind]
                ns, _ = timed(d.set_loop, keys[kind], values)
                results.setdefault(f"{where}_{kind}", []).append(ns / n)
    # every store holds the last round's values
    last = job["repeats"]
    for kind in MIXED_KINDS:
        want = mixed_values(kind, n, last)
        probe = [0, n // 2, n - 1]
        for i in probe:
            for where in (system, stores[kind]):
                require(where.get_loop([keys[kind][i]]) == want[i], f"mixed {kind}")
        stores[kind].destroy()
    results["n"] = n
    emit("ready", results=results)


ROLES.update({
    ("owner", "small_kib"): owner_small_kib,
    ("reader", "small_kib"): reader_small_kib,
    ("owner", "hotkey"): owner_hotkey,
    ("hot_writer", "hotkey"): hot_writer,
    ("hot_reader", "hotkey"): hot_reader,
    ("owner", "mixed"): owner_mixed,
})


# -- zero-copy arrays: view and create_array (job "zerocopy", issue 11) ---------
# The sharedbox owner also stores every array the hand-made way, in a
# multiprocessing.shared_memory block of its own (benchmarks/systems.py,
# ShmArrays), so that the reader times d.view(k), that hand-made
# np.ndarray(shape, dtype, buffer=shm.buf) and d[k] in one process,
# alternated repeat by repeat: on a shared machine both sides of each ratio
# meet the same load.
AFTER: list = []  # cleanups main() runs after the store is destroyed or closed


def zc_key(nbytes: int) -> str:
    return f"z{nbytes}"


def zc_copies(job: dict, nbytes: int) -> int:
    """Copies (d[k] = arr, d[k]) per timed loop: zc_ops of a 1 KiB array, 8 of
    8 MiB, one of 64 MiB and up."""
    return max(1, min(job["zc_ops"], (64 << 20) // nbytes))


def _probe(arr):
    """About 64 evenly spaced elements of a 1-D array: what the checks compare."""
    return arr[::max(1, arr.size // 64)]


def _fill_copyto(arr, src) -> None:
    import numpy as np

    np.copyto(arr, src)


def _fill_ones(arr, src) -> None:
    arr[...] = 1


# how the arrays are filled, the same on both sides: np.copyto(arr, src) (a
# frame computed elsewhere lands in the array: a read and a write stream) and
# arr[...] = 1 (writes only)
ZC_FILLS = {"copyto": _fill_copyto, "ones": _fill_ones}


def _minor_faults() -> int:
    """Page faults of this process so far (each first touch of a page)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _empty_fill(src, fill):
    """The floor of create_array: a fresh np.empty of the same shape, filled
    the same way (returned, so that freeing it is not timed)."""
    import numpy as np

    arr = np.empty(src.shape, src.dtype)
    fill(arr, src)
    return arr


def owner_zerocopy(system, job) -> None:
    import numpy as np

    hand = systems.ShmArrays()
    hand.create(job["name"] + "_hand", job)
    AFTER.append(hand.destroy)
    repeats = job["repeats"]
    results: dict = {}
    for nbytes in job["zc_bytes"]:
        arr = _array(nbytes)
        key, n = zc_key(nbytes), zc_copies(job, nbytes)
        results[f"set_{nbytes}"] = per_op(system.set_array_loop, (key, arr, n), n, repeats)
        hand.set_array(key, arr)
        del arr
    # create_array + fill + publish against np.empty + the same fill, in
    # this process, alternated round by round after a first round of each
    # (kept apart: its block may lie on pages this process never touched).
    # Below 64 MiB a round is a few ms, within one lost time slice of a
    # loaded machine, so smaller sizes run more rounds (8 MiB: 8x).
    for mib in job["array_mib"]:
        src = _array(mib << 20)
        key = f"fill{mib}"
        rounds = repeats * max(1, 64 // mib)
        for name, fill in ZC_FILLS.items():
            empty, created, inplace, faults_e, faults_c = [], [], [], [], []
            for round_ in range(rounds + 1):
                f0 = _minor_faults()
                ns_e, got = timed(_empty_fill, src, fill)
                f1 = _minor_faults()
                del got
                ns_c, arr = timed(system.create_fill, key, src, fill)
                f2 = _minor_faults()
                require(not arr.flags.writeable, "create_array: writable after the block")
                view = system.d.view(key)
                inplace.append(view.__array_interface__["data"][0]
                               == arr.__array_interface__["data"][0])
                want = _probe(src) if name == "copyto" else 1
                require(view.shape == src.shape and bool((_probe(view) == want).all()),
                        f"create_array {name} {mib} MiB")
                del view, arr
                if not round_:
                    results[f"fill_first_{name}_{mib}MiB"] = {
                        "empty": src.nbytes / ns_e, "create": src.nbytes / ns_c,
                        "faults_empty": f1 - f0, "faults_create": f2 - f1}
                else:
                    empty.append(ns_e)
                    created.append(ns_c)
                    faults_e.append(f1 - f0)
                    faults_c.append(f2 - f1)
            results[f"fill_empty_{name}_{mib}MiB"] = _bandwidth(empty, src.nbytes)
            results[f"fill_create_{name}_{mib}MiB"] = _bandwidth(created, src.nbytes)
            results[f"fill_inplace_{name}_{mib}MiB"] = inplace[1:]
            results[f"fill_faults_empty_{name}_{mib}MiB"] = faults_e
            results[f"fill_faults_create_{name}_{mib}MiB"] = faults_c
        system.d.pop(key)
        # cold: the first create_array of a fresh store, whose block lies on
        # pages no process has touched yet (one new store per round)
        for name, fill in ZC_FILLS.items():
            for round_ in range(repeats):
                store = systems.make(job["system"])
                store.create(f"{job['name']}_cold{mib}{name}{round_}",
                             dict(job, segment_bytes=2 * src.nbytes + (16 << 20)))
                f0 = _minor_faults()
                ns_e, got = timed(_empty_fill, src, fill)
                f1 = _minor_faults()
                del got
                ns_c, arr = timed(store.create_fill, key, src, fill)
                f2 = _minor_faults()
                require(store.d.view(key).shape == src.shape, f"cold create_array {name}")
                del arr
                store.destroy()
                for metric, value in (("empty", src.nbytes / ns_e), ("create", src.nbytes / ns_c),
                                      ("faults_empty", f1 - f0), ("faults_create", f2 - f1)):
                    results.setdefault(f"cold_{metric}_{name}_{mib}MiB", []).append(value)
        del src
    emit("ready", results=results)


def reader_zerocopy(system, job) -> None:
    import numpy as np

    hand = systems.ShmArrays()
    hand.attach(job["name"] + "_hand", job)
    AFTER.append(hand.close)
    repeats, ops = job["repeats"], job["zc_ops"]
    results: dict = {}
    for nbytes in job["zc_bytes"]:
        arr = _array(nbytes)
        key, n = zc_key(nbytes), zc_copies(job, nbytes)
        want = _probe(arr)
        shape, dtype = arr.shape, arr.dtype
        del arr
        hand.open_block(key)

        def check(v, what, writeable=False):
            require(v.shape == shape and v.dtype == dtype and np.array_equal(_probe(v), want)
                    and v.flags.writeable == writeable, f"{what} {nbytes} bytes")

        # the first view of the process and of each key, untimed
        check(system.view_loop(key, 1), "view")
        for _ in range(repeats):
            ns, v = timed(system.view_loop, key, ops)
            check(v, "view")
            results.setdefault(f"view_{nbytes}", []).append(ns / ops)
            del v
            ns, v = timed(hand.view_loop, key, shape, dtype, ops)
            check(v, "hand-made view", writeable=True)
            results.setdefault(f"hand_{nbytes}", []).append(ns / ops)
            del v
            ns, v = timed(system.get_array_loop, key, n)
            check(v, "get", writeable=True)
            results.setdefault(f"get_{nbytes}", []).append(ns / n)
            del v
    emit("result", results=results)


ROLES.update({
    ("owner", "zerocopy"): owner_zerocopy,
    ("reader", "zerocopy"): reader_zerocopy,
})


ROLES.update({
    ("owner", "incr"): owner_incr,
    ("incr_worker", "incr"): incrementer,
    ("owner", "wait"): owner_wait,
    ("waiter", "wait"): waiter,
})


def main() -> None:
    job = json.loads(sys.argv[1])
    system = systems.make(job["system"])
    try:
        try:
            version = system.version()
            if job["role"] == "owner":
                system.create(job["name"], job)
            else:
                system.attach(job["name"], job)
        except (ImportError, systems.Unavailable) as exc:
            emit("skip", reason=f"{type(exc).__name__}: {exc}")
            return
        emit("version", version=version)
        ROLES[(job["role"], job["job"])](system, job)
        if job["role"] == "owner":
            command()  # "stop": the readers are done
            system.destroy()
        elif job["role"] == "reader":
            system.close()
        for cleanup in AFTER:
            cleanup()
    except SystemExit:
        raise
    except BaseException as exc:  # report, so the parent can say what broke
        emit("error", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
        raise SystemExit(1)


if __name__ == "__main__":
    main()
