"""Tables, targets and the plot, from the results that run.py collected."""

from __future__ import annotations

import os
import re
import shutil
import statistics

# metric -> (row title, unit).  Unit "ns" is per operation; lower is better.
SMALL_ROWS = [
    ("get_str", "get, str value"),
    ("get_int", "get, int value"),
    ("get_dict", "get, small dict value"),
    ("set_str", "set, str value"),
    ("set_int", "set, int value"),
    ("set_dict", "set, small dict value"),
    ("contains_hit", "`in`, present"),
    ("contains_miss", "`in`, absent"),
    ("delete", "delete"),
    ("mix_90_10", "90% get / 10% set"),
]

# issue 14: job "small_kib", values of about 1 KiB and a 3-tuple (same layout
# as SMALL_ROWS)
KIB_ROWS = [
    ("get_str1k", "get, 1 KiB str"),
    ("get_pdict1k", "get, ~1 KiB dict (30 str fields + int, pickled)"),
    ("get_floats100", "get, list of 100 floats"),
    ("get_tuple3", "get, 3-tuple (int, str, float)"),
    ("set_str1k", "set, 1 KiB str"),
    ("set_pdict1k", "set, ~1 KiB dict (30 str fields + int, pickled)"),
    ("set_floats100", "set, list of 100 floats"),
    ("set_tuple3", "set, 3-tuple (int, str, float)"),
]

# job "iterate": (metric, the user's code), every way a user walks the store;
# the samples are ns per key (ns per call for len)
ITER_ROWS = [
    ("iter", "`for k in d`"),
    ("iterate", "`for k in d.keys()`"),
    ("items", "`for k, v in d.items()`"),
    ("len", "`len(d)`"),
]
# the same rows titled per operation (the ratio tables, --compare)
ITER_PER_OP_ROWS = [(metric, f"{code} (per call)" if metric == "len" else f"{code} (per key)")
                    for metric, code in ITER_ROWS]

# job "mixed": kind -> row title
MIXED_ROWS = [
    ("int", "int"),
    ("dict", "4-key dict"),
    ("floats100", "list of 100 floats"),
    ("tuple3", "3-tuple (int, str, float)"),
    ("str1k", "1 KiB str"),
    ("pdict1k", "~1 KiB pickled dict"),
]
MIXED_LIMIT = 1.3
SMALL_LIMIT = 3  # issue 14: a small str/int get or set ÷ the dict's, at most
LEN_LIMIT_NS = 100  # len(d), sharedbox, per call

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def median(samples):
    return statistics.median(samples)


def spread(samples) -> str:
    """Half the min-max range, as a percentage of the median."""
    m = median(samples)
    if len(samples) < 2 or not m:
        return ""
    return f" ±{(max(samples) - min(samples)) / 2 / m * 100:.0f}%"


def fmt_ns(ns: float) -> str:
    if ns >= 1e9:  # whole loops of slow systems (Manager's `for k in d`: a round trip a key)
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e4:
        return f"{ns / 1e3:.0f} µs"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def fmt_ratio(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}×"
    if x >= 10:
        return f"{x:.0f}×"
    return f"{x:.2f}×"


def slow_note(data, systems_) -> str:
    factors = data.get("slow_factors", {})
    parts = [f"{data['labels'][s]} 1/{factors[s]}" for s in systems_ if factors.get(s, 1) > 1]
    return ", ".join(parts) or "none"


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _get(data, job, system, metric):
    samples = data["results"].get(job, {}).get(system, {}).get(metric)
    return median(samples) if samples else None


def ratio(data, job, metric, a, b):
    x, y = _get(data, job, a, metric), _get(data, job, b, metric)
    return x / y if x and y else None


# -- the targets of DESIGN.md, each one ratio from this run ----------------------
def targets(data) -> list:
    out = []

    def add(what, value, goal, ok):
        out.append((what, "not measured" if value is None else value, goal,
                    "—" if value is None else ("met" if ok else "**not met**")))

    for kind in ("str", "int"):
        r = ratio(data, "small", f"get_{kind}", "sharedbox", "dict")
        add(f"small get ({kind}), read by another process ÷ dict get",
            r and fmt_ratio(r), "≤ 5×", r is not None and r <= 5)
    for kind in ("str", "int"):
        r = ratio(data, "small", f"set_{kind}", "sharedbox", "dict")
        add(f"small set ({kind}) ÷ dict set", r and fmt_ratio(r), "≤ 10×", r is not None and r <= 10)
    r = ratio(data, "small", "get_str", "lmdb", "sharedbox")
    add("py-lmdb get in one read txn (with unpickling) ÷ sharedbox get",
        r and fmt_ratio(r), "> 1×", r is not None and r > 1)
    for op in ("get", "set"):
        r = ratio(data, "small", f"{op}_str", "manager", "sharedbox")
        add(f"Manager().dict() {op} ÷ sharedbox {op}", r and fmt_ratio(r), "≥ 200×",
            r is not None and r >= 200)
    mib = max(data["config"].get("array_mib", [64]))
    for op, side in (("get", "r"), ("set", "w")):
        bw = _get(data, "numpy", "sharedbox", f"{op}_{mib}MiB")
        floor = _get(data, "numpy", "sharedbox", f"copy_{side}_{mib}MiB")
        r = bw / floor if bw and floor else None
        add(f"NumPy {mib} MiB {op} ÷ `arr.copy()` bandwidth (same process)",
            r and f"{r * 100:.0f}% ({bw:.1f} vs {floor:.1f} GB/s)", "≥ 70%",
            r is not None and r >= 0.7)
    for op, by_hand in (("get", "pickle.loads(r.hget(h, k))"),
                        ("set", "r.hset(h, k, pickle.dumps(v))")):
        for kind in ("str", "dict"):
            x = _get(data, "redisdict", "redisdict", f"{op}_{kind}")
            y = _get(data, "redisdict", "redisdict", f"hand_{op}_{kind}")
            r = x / y if x and y else None
            add(f"RedisDict {op} ({kind} value) ÷ `{by_hand}`, same server",
                r and fmt_ratio(r), "≤ 1.2×", r is not None and r <= 1.2)
    for fast, slow, what in (("update_bulk", "loop_set_bulk", "update()"),
                             ("items_bulk", "loop_get_bulk", "items()")):
        x, y = _get(data, "redisdict", "redisdict", slow), _get(data, "redisdict", "redisdict", fast)
        r = x / y if x and y else None
        n = data["config"].get("bulk_keys", 10_000)
        add(f"RedisDict {what} of {n:,} keys: speed-up over a per-key loop",
            r and fmt_ratio(r), "≥ 10×", r is not None and r >= 10)
    one = _get(data, "scale_read", "sharedbox", "readers_1")
    two = _get(data, "scale_read", "sharedbox", "readers_2")
    r = two / one if one and two else None
    add("2 reader processes ÷ 1 (aggregate small gets)", r and fmt_ratio(r), "≥ 1.7×",
        r is not None and r >= 1.7)
    return out


# -- markdown ------------------------------------------------------------------------
def rounds_text(cfg) -> str:
    """How the small operations and the walks were sampled (run.py ROUNDS_JOBS)."""
    rounds = cfg.get("rounds", 1)
    if rounds <= 1:
        return ""
    return (f"the small operations and the walks ran in {rounds} rounds, every system once "
            f"a round in fresh processes, taking turns, and pool the rounds' samples "
            f"({rounds * cfg['repeats']} a figure, walks "
            f"{rounds * cfg.get('iter_repeats', cfg['repeats'])}); ")


def markdown(data) -> str:
    labels = data["labels"]
    cfg = data["config"]
    m = data["machine"]
    parts = []
    parts.append(
        f"Run {m['date']} on {m['cpu']}, {m['usable_cpus']} usable CPUs of {m['cpus']}, "
        f"{m['memory']} RAM, {m['os']}, Python {m['python']}; /dev/shm free: "
        f"{m['dev_shm_free']}. Each figure is the median of {cfg['repeats']} repeats "
        f"(the walks of `for k in d`, keys() and items(): "
        f"{cfg.get('iter_repeats', cfg['repeats'])}); "
        f"{rounds_text(cfg)}"
        f"± is half the min–max range. Whole run: {data.get('seconds', '?')} s.\n\n"
    )
    parts.append("### Targets\n")
    parts.append(_table(["target", "this run", "goal", ""],
                        [list(t) for t in targets(data) + coord_targets(data)
                         + issue14_targets(data) + zc_targets(data)]))

    small = data["results"].get("small", {})
    it = data["results"].get("iterate", {})
    if small or it:
        # the small job's systems, then any that only the iterate job ran
        cols = list(small) + [s for s in it if s not in small]
        intro = []
        if small:
            intro.append(
                f"{cfg['n']:,} keys of each kind (str, int, small dict values); values "
                "written by the owner process and read by a second process; keys in random "
                "order.")
        if it:
            intro.append(
                f"Iteration: {cfg['iter_keys']:,} keys holding ints, written by the owner "
                "process and walked by a second process each way a user walks them "
                "(`items()` also unpickles every value where the system stores bytes); "
                f"`len(d)`: time per call, {cfg.get('len_calls', 0):,} calls per loop.")
        parts.append(
            "\n### Small operations: time per operation\n\n" + " ".join(intro)
            + " Slow systems time fewer operations over the same data "
            f"({slow_note(data, cols)}).\n\n"
        )
        rows = []
        for metric, title in SMALL_ROWS if small else []:
            row = [title]
            for s in cols:
                samples = small.get(s, {}).get(metric)
                row.append(fmt_ns(median(samples)) + spread(samples) if samples else "—")
            rows.append(row)
        for metric, code in ITER_ROWS if it else []:
            # the loops over every key: the whole loop; len(d): one call
            per = 1 if metric == "len" else cfg["iter_keys"]
            row = [f"{code} (per call)" if metric == "len"
                   else f"{code} over {cfg['iter_keys']:,} keys (whole loop)"]
            for s in cols:
                samples = it.get(s, {}).get(metric)
                row.append(fmt_ns(median(samples) * per) + spread(samples) if samples else "—")
            rows.append(row)
        if small:
            row = ["attach to an existing store"]
            for s in cols:
                samples = small.get(s, {}).get("attach")
                row.append(fmt_ns(median(samples)) + spread(samples) if samples else "—")
            rows.append(row)
        parts.append(_table(["operation"] + [labels[s] for s in cols], rows))

        iter_metrics = {metric for metric, _ in ITER_ROWS}
        for base, title in (("dict", "Ratio to the in-process dict (lower is better)"),
                            ("sharedbox", "Each system's time ÷ sharedbox's "
                                          "(above 1: sharedbox is faster)")):
            if base not in cols:
                continue
            parts.append(f"\n### {title}\n\n")
            rows = []
            for metric, rtitle in ((SMALL_ROWS if small else [])
                                   + (ITER_PER_OP_ROWS if it else [])):
                job = "iterate" if metric in iter_metrics else "small"
                row = [rtitle]
                for s in cols:
                    r = ratio(data, job, metric, s, base)
                    row.append(fmt_ratio(r) if r else "—")
                rows.append(row)
            parts.append(_table(["operation"] + [labels[s] for s in cols], rows))

    arrays = data["results"].get("numpy", {})
    if arrays:
        mibs = cfg["array_mib"]
        parts.append(
            "\n### NumPy arrays: bandwidth (GB/s, higher is better)\n\n`set` in the owner "
            "process, `get` (a new array) in a second process; `arr.copy()` measured in "
            "the same processes is the floor.\n\n"
        )
        header = ["system"] + [f"{op} {mib} MiB" for mib in mibs for op in ("set", "get")]
        rows = []
        first = next(iter(arrays.values()))
        floor = ["`arr.copy()`"]
        for mib in mibs:
            for side in ("w", "r"):
                samples = first.get(f"copy_{side}_{mib}MiB")
                floor.append(f"{median(samples):.1f}{spread(samples)}" if samples else "—")
        rows.append(floor)
        for s, res in arrays.items():
            row = [labels[s]]
            for mib in mibs:
                for op in ("set", "get"):
                    samples = res.get(f"{op}_{mib}MiB")
                    row.append(f"{median(samples):.2f}{spread(samples)}" if samples else "—")
            rows.append(row)
        parts.append(_table(header, rows))

    for job, what in (("scale_read", "readers"), ("scale_write", "writers")):
        res = data["results"].get(job, {})
        if not res:
            continue
        counts = cfg[what]
        parts.append(
            f"\n### Scaling over {what}: aggregate throughput (million ops/s)\n\n"
            f"Each process runs {cfg['burst_seconds']} s bursts of small "
            f"{'gets over shared keys' if what == 'readers' else 'sets over its own keys'};"
            " the number in brackets is the speed-up over one process. The in-process dict "
            "row (a private dict per process) shows what the machine itself allows.\n\n"
        )
        rows = []
        for s, r in res.items():
            one = r.get(f"{what}_1")
            row = [labels[s]]
            for c in counts:
                samples = r.get(f"{what}_{c}")
                if not samples:
                    row.append("—")
                    continue
                cell = f"{median(samples) / 1e6:.2f}{spread(samples)}"
                if one and c != 1:
                    cell += f" ({median(samples) / median(one):.2f}×)"
                row.append(cell)
            rows.append(row)
        parts.append(_table(["system"] + [f"{c} {what}" for c in counts], rows))

    rd = data["results"].get("redisdict", {}).get("redisdict")
    if rd:
        n = cfg.get("bulk_keys", 10_000)
        parts.append(
            "\n### RedisDict against hand-written redis-py (same server)\n\n"
            "Time per operation, both measured in the same processes, alternated round by "
            "round. By hand: `r.hset(h, k, pickle.dumps(v))` and `pickle.loads(r.hget(h, k))`; "
            "RedisDict runs a Lua script per write (max_keys, versions, notification) and "
            "stores the engine's encoding. "
            f"Bulk rows: {n:,} keys in a second dict, update()/items() against per-key loops "
            "of RedisDict (whole operation ÷ keys).\n\n"
        )
        rows = []
        for op in ("get", "set"):
            for kind, what in (("str", "str value"), ("int", "int value"),
                               ("dict", "small dict value")):
                by_hand, ours = rd.get(f"hand_{op}_{kind}"), rd.get(f"{op}_{kind}")
                if not by_hand or not ours:
                    continue
                rows.append([f"{op}, {what}", fmt_ns(median(by_hand)) + spread(by_hand),
                             fmt_ns(median(ours)) + spread(ours),
                             fmt_ratio(median(ours) / median(by_hand))])
        for fast, slow, what in (("update_bulk", "loop_set_bulk", "update()"),
                                 ("items_bulk", "loop_get_bulk", "list(items())")):
            loop, bulk = rd.get(slow), rd.get(fast)
            if loop and bulk:
                rows.append([f"{what} of {n:,} keys (per key) vs a per-key loop",
                             fmt_ns(median(loop)) + spread(loop) + " (loop)",
                             fmt_ns(median(bulk)) + spread(bulk),
                             fmt_ratio(median(bulk) / median(loop))])
        parts.append(_table(["operation", "by hand / loop", "RedisDict", "ratio"], rows))

    parts.append(issue14_markdown(data))
    parts.append(zc_markdown(data))
    parts.append(coord_markdown(data))
    parts.append("\n### Versions\n\n")
    parts.append("\n".join(f"- {labels[s]}: {v}" for s, v in data["versions"].items()) + "\n")
    if data["skipped"]:
        parts.append("\nSkipped: " + "; ".join(f"{labels.get(s, s)} ({why})"
                                               for s, why in data["skipped"].items()) + "\n")
    if data["errors"]:
        parts.append("\nFailed: " + "; ".join(
            f"{k} ({v.strip().splitlines()[0][:200]})" for k, v in data["errors"].items()) + "\n")
    return "".join(parts)


# -- issue 14: values of about 1 KiB, one hot key, a mixed store, --compare -------
SHARED_OTHERS = ("sharedbox-0.2.4", "lmdb", "lmdb-op", "redis", "manager", "ultradict",
                 "shm-dict")


def _fastest_other(data, job, metric, higher_better=False):
    """(figure, system) of the best shared system other than sharedbox."""
    res = data["results"].get(job, {})
    got = [(median(res[s][metric]), s) for s in SHARED_OTHERS
           if res.get(s, {}).get(metric)]
    if not got:
        return None
    return max(got) if higher_better else min(got)


def issue14_targets(data) -> list:
    out = []

    def add(what, value, goal, ok):
        out.append((what, "not measured" if value is None else value, goal,
                    "—" if value is None else ("met" if ok else "**not met**")))

    labels = data["labels"]

    def add_lead(title, job, metric, scale=1):
        """sharedbox against the fastest other shared system (times × scale shown)."""
        ours = _get(data, job, "sharedbox", metric)
        best = _fastest_other(data, job, metric)
        if ours is None or best is None:
            return
        r = best[0] / ours
        add(f"{title}: fastest other shared system ÷ sharedbox",
            f"{fmt_ratio(r)} ({labels[best[1]]} {fmt_ns(best[0] * scale)}, sharedbox "
            f"{fmt_ns(ours * scale)})", "> 1×", r > 1)

    if data["results"].get("small", {}).get("sharedbox"):
        for op in ("get", "set"):
            for kind in ("str", "int"):
                r = ratio(data, "small", f"{op}_{kind}", "sharedbox", "dict")
                add(f"small {op} ({kind}) ÷ dict {op} (issue 14)", r and fmt_ratio(r),
                    f"≤ {SMALL_LIMIT}×", r is not None and r <= SMALL_LIMIT)
        add_lead("get, 4-key dict", "small", "get_dict")
        add_lead("set, 4-key dict", "small", "set_dict")
    kib = data["results"].get("small_kib", {})
    if kib.get("sharedbox"):
        for metric, title in KIB_ROWS:
            add_lead(title, "small_kib", metric)
    if data["results"].get("iterate", {}).get("sharedbox"):
        n = data["config"]["iter_keys"]
        for metric, code in ITER_ROWS:
            if metric == "len":
                continue
            what = f"{code} over {n:,} keys"
            r = ratio(data, "iterate", metric, "sharedbox", "dict")
            add(f"{what} ÷ in-process dict", r and fmt_ratio(r), "≤ 2×",
                r is not None and r <= 2)
            r = ratio(data, "iterate", metric, "lmdb", "sharedbox")
            add(f"{what}: py-lmdb's cursor ÷ sharedbox", r and fmt_ratio(r), "> 1×",
                r is not None and r > 1)
            add_lead(f"iteration, {what}", "iterate", metric, scale=n)
        v = _get(data, "iterate", "sharedbox", "len")
        add("`len(d)`, sharedbox, per call", v and fmt_ns(v), f"≤ {LEN_LIMIT_NS} ns",
            v is not None and v <= LEN_LIMIT_NS)
    hot = data["results"].get("hotkey", {})
    if hot.get("sharedbox"):
        ours = median(hot["sharedbox"]["reads"])
        best = _fastest_other(data, "hotkey", "reads", higher_better=True)
        if best is not None:
            r = ours / best[0]
            add("hot key, 2 readers + 1 writer: sharedbox reads/s ÷ the fastest other "
                "shared system's", f"{fmt_ratio(r)} ({fmt_rate(ours)} vs "
                f"{labels[best[1]]}'s {fmt_rate(best[0])})", "> 1×", r > 1)
        bad = [f"{labels[s]}: {sum(r.get('bad', [])):,} torn, {sum(r.get('stale', [])):,} stale"
               for s, r in hot.items() if sum(r.get("bad", [])) or sum(r.get("stale", []))]
        ours = hot["sharedbox"]
        ok = not sum(ours.get("bad", [])) and not sum(ours.get("stale", []))
        add("hot key: every value sharedbox read was whole and never older than the one "
            "before", "yes" + (f" (others: {'; '.join(bad)})" if bad else "") if ok
            else "**no**: " + "; ".join(bad), "yes", ok)
    mixed = data["results"].get("mixed", {}).get("sharedbox")
    if mixed:
        worst = max(((median(mixed[f"mixed_{k}"]) / median(mixed[f"single_{k}"]), t)
                     for k, t in MIXED_ROWS if mixed.get(f"mixed_{k}")), default=None)
        if worst:
            add("mixed store: overwrite pass ÷ the same pass in a one-kind store "
                "(sharedbox, worst kind)", f"{fmt_ratio(worst[0])} ({worst[1]})",
                f"≤ {MIXED_LIMIT}×", worst[0] <= MIXED_LIMIT)
    return out


def _per_op_tables(data, job, rows, intro, heading) -> str:
    """The small job's three tables (time; ÷ dict; ÷ sharedbox) for `rows`."""
    labels = data["labels"]
    res = data["results"].get(job, {})
    if not res:
        return ""
    cols = list(res)
    parts = [f"\n### {heading}: time per operation\n\n{intro} Slow systems time fewer "
             f"operations over the same data ({slow_note(data, cols)}).\n\n"]
    table = []
    for metric, title in rows:
        row = [title]
        for s in cols:
            samples = res[s].get(metric)
            row.append(fmt_ns(median(samples)) + spread(samples) if samples else "—")
        table.append(row)
    parts.append(_table(["operation"] + [labels[s] for s in cols], table))
    for base, title in (("dict", "ratio to the in-process dict (lower is better)"),
                        ("sharedbox", "each system's time ÷ sharedbox's "
                                      "(above 1: sharedbox is faster)")):
        if base not in res:
            continue
        parts.append(f"\n{heading}, {title}:\n\n")
        table = []
        for metric, rtitle in rows:
            row = [rtitle]
            for s in cols:
                r = ratio(data, job, metric, s, base)
                row.append(fmt_ratio(r) if r else "—")
            table.append(row)
        parts.append(_table(["operation"] + [labels[s] for s in cols], table))
    return "".join(parts)


def issue14_markdown(data) -> str:
    cfg = data["config"]
    labels = data["labels"]
    parts = [_per_op_tables(
        data, "small_kib", KIB_ROWS,
        f"{cfg['n']:,} keys of each kind: a 1 KiB str, a dict of 30 fields of 21-char "
        "strs and an int (1,077 bytes pickled), a list of 100 floats (916 bytes pickled), "
        "a 3-tuple of an int, an 11-char str and a float (40 bytes pickled); written by "
        "the owner process, read by a second process, keys in random order.",
        "Values of about 1 KiB and a 3-tuple")]
    hot = data["results"].get("hotkey", {})
    if hot:
        parts.append(
            f"\n### One hot key: 2 readers while a third process overwrites it\n\n"
            f"Two processes read the same key in {cfg['hot_seconds']:g} s bursts "
            f"({cfg['repeats']} times) while a third overwrites it without pause with "
            "128-char str values that carry their sequence number and a CRC-32; every "
            "value read is checked off the clock (whole, checksum right, never older "
            "than the previous read); a read that fails the checksum or does not decode is "
            "torn, one older than the read before it is stale. Reads/s: both readers "
            "together; distinct values: how many of the writer's values the readers saw "
            "per burst.\n\n")
        table = []
        for s, r in hot.items():
            bad, stale = sum(r.get("bad", [])), sum(r.get("stale", []))
            table.append([labels[s], fmt_rate(median(r["reads"])) + spread(r["reads"]),
                          f"{median(r['seen']):,.0f}",
                          fmt_rate(median(r["writes"])) if r.get("writes") else "—",
                          "0" if not bad else f"**{bad:,}**",
                          "0" if not stale else f"**{stale:,}**"])
        parts.append(_table(["system", "reads/s (2 readers)", "distinct values seen per burst",
                             "writer's sets/s", "torn reads (all bursts)",
                             "stale reads (all bursts)"], table))
    mixed = data["results"].get("mixed", {})
    if mixed:
        n = cfg.get("mixed_n", 0)
        passes = max(len(v) for r in mixed.values() for v in r.values()
                     if isinstance(v, list))
        parts.append(
            f"\n### One store of many kinds against a store per kind\n\n"
            f"One store holds {n:,} keys of each of six kinds; each round overwrites one "
            "kind's keys with new values, kind after kind: two timed passes in the "
            "mixed store and two in a store holding only that kind's keys, in the order "
            "mixed, single, single, mixed in odd rounds and single, mixed, mixed, single "
            "in even ones (the pass that runs second finds the shared key objects in the "
            "CPU cache, and a round's first pass follows the previous kind's passes, "
            "which leave its store out of the caches: each side gets both orders and "
            "half the cold starts). "
            f"Time per set, median of {passes} passes; all in one process. "
            f"Goal for sharedbox: mixed ÷ single ≤ {MIXED_LIMIT}×.\n\n")
        cols = list(mixed)
        header = ["kind overwritten"]
        for s in cols:
            header += [f"{labels[s]} mixed", "single", "ratio"]
        table = []
        for kind, title in MIXED_ROWS:
            row = [title]
            for s in cols:
                a, b = mixed[s].get(f"mixed_{kind}"), mixed[s].get(f"single_{kind}")
                if not a or not b:
                    row += ["—"] * 3
                    continue
                r = median(a) / median(b)
                row += [fmt_ns(median(a)) + spread(a), fmt_ns(median(b)) + spread(b),
                        fmt_ratio(r) if s != "sharedbox" or r <= MIXED_LIMIT
                        else f"**{fmt_ratio(r)}**"]
            table.append(row)
        parts.append(_table(header, table))
    return "".join(parts)


def compare(previous, now, jobs, slower: float) -> tuple:
    """(markdown table, flagged rows) of every per-operation row of `jobs`
    measured in both runs: median then, median now, now ÷ then."""
    titles = dict(SMALL_ROWS + KIB_ROWS + ITER_PER_OP_ROWS)
    labels = now["labels"]
    rows, flagged = [], []
    for job in jobs:
        old_res = previous.get("results", {}).get(job, {})
        for system, res in now["results"].get(job, {}).items():
            for metric, title in titles.items():
                a = old_res.get(system, {}).get(metric)
                b = res.get(metric)
                if not a or not b:
                    continue
                r = median(b) / median(a)
                flag = r > slower
                name = f"{labels.get(system, system)}: {titles[metric]}"
                if flag:
                    flagged.append(name)
                rows.append([name, fmt_ns(median(a)), fmt_ns(median(b)), fmt_ratio(r),
                             "FLAG" if flag else ""])
    if not rows:
        return "No row was measured in both runs.\n", flagged
    then = previous.get("machine", {}).get("date", "?")
    def samples_of(cfg):
        rounds = cfg.get("rounds", 1)
        turns = f"; small and iterate {rounds} rounds of them" if rounds > 1 else ""
        return f"{cfg.get('repeats', '?')} repeats{turns}"
    head = (f"Previous run {then} (medians of {samples_of(previous.get('config', {}))}), "
            f"this run medians of {samples_of(now['config'])}; FLAG: more than "
            f"{slower - 1:.0%} slower.\n\n")
    n_then, n_now = previous.get("config", {}).get("n"), now["config"].get("n")
    if n_then != n_now:
        head += (f"**Warning:** the previous run used {n_then} keys per kind and this one "
                 f"{n_now} (--quick on one side only?); per-operation times depend on it.\n\n")
    return head + _table(["row", "previous", "now", "ratio", ""], rows), flagged


# -- issue 11: zero-copy arrays, d.view and create_array (job "zerocopy") --------
ZC_VIEW_LIMIT_NS = 5_000     # d.view(k) at every size
ZC_GET_OVER_VIEW = 1_000     # d[k] ÷ d.view(k) at 64 MiB, at least
ZC_OVER_HAND = 2.0           # d.view(k) ÷ the hand-made ndarray over shared_memory, at most
ZC_FILL_SHARE = 0.9          # create_array + fill + publish ÷ np.empty + fill, bandwidth
ZC_FILLS = [("copyto", "`np.copyto(arr, src)`"), ("ones", "`arr[...] = 1`")]
HAND_VIEW = "`np.ndarray(shape, dtype, buffer=shm.buf)`"


def paired(x, y):
    """x ÷ y for samples taken in pairs (the zerocopy job alternates the two
    sides repeat by repeat): the median of the per-pair ratios, so that a
    load that changes between repeats hits both sides of each ratio alike.
    The ratio of the medians if the samples do not pair up."""
    if not x or not y:
        return None
    if len(x) == len(y):
        return median([a / b for a, b in zip(x, y)])
    return median(x) / median(y)


def fmt_size(nbytes: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} B"


def _zc(data) -> dict:
    return data["results"].get("zerocopy", {}).get("sharedbox") or {}


def _zc_sizes(data) -> list:
    cfg = data["config"]
    return cfg.get("zc_bytes") or sorted({mib << 20 for mib in cfg.get("array_mib", [])})


def _zc_ratio_size(data) -> int:
    """The size of the get ÷ view target: 64 MiB, or the largest size of the
    numpy job (a --quick run has no 64 MiB)."""
    mibs = data["config"].get("array_mib", [64])
    return (64 if 64 in mibs else max(mibs)) << 20


def _zc_fill_mib(data) -> int:
    mibs = data["config"].get("array_mib", [64])
    return 64 if 64 in mibs else max(mibs)


def zc_targets(data) -> list:
    out = []

    def add(what, value, goal, ok):
        out.append((what, "not measured" if value is None else value, goal,
                    "—" if value is None else ("met" if ok else "**not met**")))

    zc = _zc(data)
    if not zc:
        return out
    for nbytes in _zc_sizes(data):
        samples = zc.get(f"view_{nbytes}")
        v = median(samples) if samples else None
        add(f"`d.view(k)` of a {fmt_size(nbytes)} array, in a second process (view + release)",
            v and fmt_ns(v), f"≤ {fmt_ns(ZC_VIEW_LIMIT_NS)}", v is not None and v <= ZC_VIEW_LIMIT_NS)
    nbytes = _zc_ratio_size(data)
    g, v = zc.get(f"get_{nbytes}"), zc.get(f"view_{nbytes}")
    r = paired(g, v)
    add(f"`d[k]` ÷ `d.view(k)`, {fmt_size(nbytes)} array, same process",
        r and f"{fmt_ratio(r)} ({fmt_ns(median(g))} vs {fmt_ns(median(v))})",
        f"≥ {ZC_GET_OVER_VIEW:,}×", r is not None and r >= ZC_GET_OVER_VIEW)
    for nbytes in _zc_sizes(data):
        v, h = zc.get(f"view_{nbytes}"), zc.get(f"hand_{nbytes}")
        r = paired(v, h)
        add(f"`d.view(k)` ÷ hand-made {HAND_VIEW} over multiprocessing.shared_memory, "
            f"{fmt_size(nbytes)}", r and f"{fmt_ratio(r)} ({fmt_ns(median(v))} vs "
            f"{fmt_ns(median(h))})", f"≤ {ZC_OVER_HAND:g}×", r is not None and r <= ZC_OVER_HAND)
    mib = _zc_fill_mib(data)
    for prefix, what in (("fill", "block reused"), ("cold", "cold: a new store's first block")):
        for fill, title in ZC_FILLS:
            c = zc.get(f"{prefix}_create_{fill}_{mib}MiB")
            e = zc.get(f"{prefix}_empty_{fill}_{mib}MiB")
            r = paired(c, e)
            add(f"`create_array` + fill + publish of {mib} MiB ÷ fill of a fresh `np.empty`, "
                f"same process (fill: {title}; {what})",
                r and f"{r * 100:.0f}% ({median(c):.1f} vs {median(e):.1f} GB/s)",
                f"≥ {ZC_FILL_SHARE:.0%}", r is not None and r >= ZC_FILL_SHARE)
    return out


def zc_markdown(data) -> str:
    zc = _zc(data)
    if not zc:
        return ""
    cfg = data["config"]
    sizes = _zc_sizes(data)
    parts = [
        "\n### Zero-copy arrays: `d.view(k)` against `d[k]` and a hand-made view (time per "
        "operation)\n\nFloat64 arrays. `d[k] = arr` in the owner process; in a second "
        f"process, alternated repeat by repeat: {cfg.get('zc_ops', 0):,} × `v = d.view(k)` "
        "(each view released when the next is bound, so the unpin is timed too), the same "
        f"loop of the hand-made {HAND_VIEW} over a `multiprocessing.shared_memory` block "
        "the owner filled with the same array (attached once, looked up by key), and "
        "`d[k]` (a new array). Every result is checked against the owner's array. Ratios "
        "(here and in the targets): the median of the ratios of each repeat's pair.\n\n"]
    rows = []
    for metric, title in (("set", "`d[k] = arr` (copy in, owner)"),
                          ("get", "`d[k]` (copy out)"),
                          ("view", "`d.view(k)` (no copy)"),
                          ("hand", f"hand-made {HAND_VIEW}")):
        row = [title]
        for nbytes in sizes:
            samples = zc.get(f"{metric}_{nbytes}")
            row.append(fmt_ns(median(samples)) + spread(samples) if samples else "—")
        rows.append(row)
    for (a, b), title in ((("get", "view"), "`d[k]` ÷ `d.view(k)`"),
                          (("view", "hand"), "`d.view(k)` ÷ hand-made")):
        row = [title]
        for nbytes in sizes:
            x, y = zc.get(f"{a}_{nbytes}"), zc.get(f"{b}_{nbytes}")
            r = paired(x, y)
            row.append(fmt_ratio(r) if r else "—")
        rows.append(row)
    parts.append(_table(["operation"] + [fmt_size(n) for n in sizes], rows))
    parts.append(
        "\n### `create_array` + fill + publish against filling a fresh `np.empty` "
        "(GB/s, higher is better)\n\nIn one process, alternated round by round: `a = "
        "np.empty(shape, dtype)` + fill, against `with d.create_array(k, shape, dtype) as "
        "arr:` + the same fill + the publish at the block's end (each round replaces the "
        f"key's value); {cfg['repeats']} rounds at 64 MiB, 64 MiB ÷ size × "
        f"{cfg['repeats']} below, after a first round of each (left out here, listed "
        "below the table: its block may lie on pages the process never touched); ratio: "
        "the median of the rounds' ratios. "
        "Cold: the first `create_array` of a new store, a block on pages no process has "
        f"touched yet (a new store per round, {cfg['repeats']} rounds, each against its "
        "own `np.empty` round; ratio to those). In place: the published "
        "record is the block that was filled (no copy at publish), every round. Page "
        "faults: the process's minor faults during each timed round (medians), one per "
        "first touch of a page. `d[k] = src` (a copy of an existing array, the same run's "
        "set) for reference.\n\n")
    rows = []
    for mib in cfg.get("array_mib", []):
        for fill, title in ZC_FILLS:
            e, c = zc.get(f"fill_empty_{fill}_{mib}MiB"), zc.get(f"fill_create_{fill}_{mib}MiB")
            if not e or not c:
                continue
            inplace = zc.get(f"fill_inplace_{fill}_{mib}MiB", [])
            setter = zc.get(f"set_{mib << 20}")
            faults = " / ".join(
                f"{median(x):,.0f}" if x else "—"
                for x in (zc.get(f"fill_faults_empty_{fill}_{mib}MiB"),
                          zc.get(f"fill_faults_create_{fill}_{mib}MiB"),
                          zc.get(f"cold_faults_create_{fill}_{mib}MiB")))
            ce = zc.get(f"cold_empty_{fill}_{mib}MiB")
            cc = zc.get(f"cold_create_{fill}_{mib}MiB")
            rows.append([f"{mib} MiB", title, f"{median(e):.2f}{spread(e)}",
                         f"{median(c):.2f}{spread(c)}", f"{paired(c, e) * 100:.0f}%",
                         f"{median(cc):.2f}{spread(cc)}" if cc else "—",
                         f"{paired(cc, ce) * 100:.0f}%" if cc and ce else "—",
                         "yes" if inplace and all(inplace) else
                         f"**{sum(inplace)} of {len(inplace)}**", faults,
                         f"{(mib << 20) / median(setter):.2f}{spread(setter)}"
                         if setter and fill == "copyto" else ""])
    parts.append(_table(["size", "fill", "`np.empty` + fill", "`create_array` + fill + publish",
                         "ratio", "cold `create_array`", "ratio", "in place",
                         "page faults per round: `np.empty` / `create_array` / cold",
                         "`d[k] = src`"], rows))
    first = []
    for mib in cfg.get("array_mib", []):
        for fill, title in ZC_FILLS:
            f = zc.get(f"fill_first_{fill}_{mib}MiB")
            if f:
                first.append(f"{mib} MiB, {title}: `np.empty` {f['empty']:.2f} GB/s "
                             f"({f['faults_empty']:,} faults), `create_array` "
                             f"{f['create']:.2f} GB/s ({f['faults_create']:,} faults)")
    if first:
        parts.append("\nFirst rounds: " + "; ".join(first) + ".\n")
    return "".join(parts)


# -- issue 12's coordination API: counters and waiting (jobs incr, wait) -----------
# (system, variant) -> row title of the incr table, in table order
INCR_ROWS = [
    ("sharedbox", "incr", "sharedbox `d.incr(k)`"),
    ("sharedbox", "cas", "sharedbox `compare_and_set(k, v, v + 1)` retry loop"),
    ("sharedbox", "lock", "sharedbox `with d.lock(\"counter\"): d[k] += 1`"),
    ("redis", "hincrby", "Redis `r.hincrby(h, k, 1)` (redis-py)"),
    ("ultradict", "lock", "UltraDict(shared_lock=True): `with d.lock: d[k] += 1`"),
    ("manager", "lock", "Manager().dict() + Manager().Lock(): `with lock: d[k] += 1`"),
]


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M/s"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k/s"
    return f"{x:.0f} /s"


def _incr_rows(data):
    """(system, variant, title, results) for every measured row."""
    res = data["results"].get("incr", {})
    for system, variant, title in INCR_ROWS:
        r = res.get(system, {})
        if f"{variant}_n" in r:
            yield system, variant, title, r


def _totals_exact(data) -> tuple:
    """(runs, all exact) over every incr run of every system."""
    runs, exact = 0, True
    for _, variant, _, r in _incr_rows(data):
        n = r[f"{variant}_n"]
        for c in data["config"].get("incr_procs", []):
            for total in r.get(f"{variant}_{c}_totals", []):
                runs += 1
                exact = exact and total == c * n
    return runs, exact


def _idle_cpu_per_s(res, mode):
    cpu, secs = res.get(f"{mode}_cpu"), res.get(f"{mode}_idle_s")
    if not cpu or not secs:
        return None
    return median([c / s for c, s in zip(cpu, secs)])  # ns of CPU per second of waiting


def coord_targets(data) -> list:
    out = []

    def add(what, value, goal, ok):
        out.append((what, "not measured" if value is None else value, goal,
                    "—" if value is None else ("met" if ok else "**not met**")))

    res = data["results"].get("incr", {})
    ours = res.get("sharedbox", {})
    for c in data["config"].get("incr_procs", []):
        mine = ours.get(f"incr_{c}")
        others = [(median(r[f"{v}_{c}"]), data["labels"].get(s, s))
                  for s, v, t, r in _incr_rows(data) if s != "sharedbox" and r.get(f"{v}_{c}")]
        if not mine or not others:
            add(f"incr of one counter from {c} process{'es' if c > 1 else ''}: sharedbox "
                "`d.incr` ÷ the fastest other system", None, "> 1×", False)
            continue
        best, title = max(others)
        r = median(mine) / best
        add(f"incr of one counter from {c} process{'es' if c > 1 else ''}: sharedbox "
            "`d.incr` ÷ the fastest other system",
            f"{fmt_ratio(r)} ({fmt_rate(median(mine))} vs {title}'s "
            f"{fmt_rate(best)})", "> 1×", r > 1)
    runs, exact = _totals_exact(data)
    add("incr: every run's final total = processes × increments, every system",
        f"{runs} runs, {'all exact' if exact else 'NOT ALL EXACT'}" if runs else None,
        "exact", exact)
    w = data["results"].get("wait", {}).get("sharedbox", {})
    for stat, goal, limit in (("median", "≤ 50 µs", 50e3), ("p99", "≤ 1 ms", 1e6)):
        samples = w.get(f"wait_{stat}")
        v = median(samples) if samples else None
        add(f"`d.wait` latency, set in one process to wait returning in another ({stat})",
            v and fmt_ns(v), goal, v is not None and v <= limit)
    v = _idle_cpu_per_s(w, "wait")
    add("CPU of a process waiting in `d.wait` while nothing changes, per second",
        v and fmt_ns(v), "≤ 1 ms", v is not None and v <= 1e6)
    return out


def coord_markdown(data) -> str:
    cfg = data["config"]
    parts = []
    rows = list(_incr_rows(data))
    if rows:
        procs = cfg["incr_procs"]
        parts.append(
            "\n### Counters: one key incremented from many processes (increments/s, all "
            "processes together)\n\nEach process increments the same key N times, "
            "starting at the same moment; the figure is all increments over the time from "
            "the start to the last process's end. After every run the counter must hold "
            "exactly processes × N, or the suite fails. Slow systems do fewer increments "
            "per process (N in the last column).\n\n"
        )
        table = []
        for system, variant, title, r in rows:
            n = r[f"{variant}_n"]
            row = [title]
            totals = []
            for c in procs:
                samples = r.get(f"{variant}_{c}")
                row.append(fmt_rate(median(samples)) + spread(samples) if samples else "—")
                got = r.get(f"{variant}_{c}_totals", [])
                if got:
                    ok = all(t == c * n for t in got)
                    totals.append(f"{got[0]:,}" + ("" if ok else " **WRONG**"))
            row.append(f"{n:,}; " + " / ".join(totals))
            table.append(row)
        parts.append(_table(["system, code"] + [f"{c} process{'es' if c > 1 else ''}"
                                                for c in procs]
                            + ["N per process; final total (every run)"], table))

    w = data["results"].get("wait", {}).get("sharedbox")
    if w:
        secs = cfg.get("idle_seconds", 1.0)
        parts.append(
            f"\n### Waiting for a change: latency and CPU\n\n{w['rounds']:,} round trips "
            "per run: the setter sleeps a random 0.1–1.1 ms, stores CLOCK_MONOTONIC (ns) as "
            "the value and waits for an acknowledgement; the waiter records CLOCK_MONOTONIC "
            "when it returns, minus the stored stamp. `d.wait`: `v = d.version(k)` taken "
            "before reading, then `v = d.wait(k, v)`; polling: `while d.get(k) == old: "
            f"time.sleep(0.001)`. CPU: `time.process_time()` around a {secs:g} s wait on "
            "a key nothing changes, in the waiting process, with its voluntary context "
            "switches; `time.sleep` is the machine's floor for one sleep.\n\n"
        )
        table = []
        for mode, title in (("wait", "`d.wait(k, v)` (futex in the segment)"),
                            ("poll", "polling loop, `time.sleep(0.001)`"),
                            ("sleep", f"`time.sleep({secs:g})` (CPU floor only)")):
            row = [title]
            for stat in ("median", "p99", "max"):
                samples = w.get(f"{mode}_{stat}")
                row.append(fmt_ns(median(samples)) + spread(samples) if samples else "—")
            cpu = w.get(f"{mode}_cpu")
            row.append(fmt_ns(median(cpu)) + spread(cpu) if cpu else "—")
            sw = w.get(f"{mode}_switches")
            row.append(f"{median(sw):.0f}" if sw else "—")
            table.append(row)
        parts.append(_table(["waiter", "latency, median", "p99", "max",
                             f"CPU of a {secs:g} s idle wait", "context switches"], table))
    return "".join(parts)


# -- plot -------------------------------------------------------------------------------
def plot(data, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = data["labels"]
    zc = _zc(data)
    fig, axes = plt.subplots(3 if zc else 2, 2, figsize=(14, 15 if zc else 10))
    small = data["results"].get("small", {})
    ax = axes[0][0]
    metrics = ["get_str", "set_str", "contains_hit", "mix_90_10"]
    systems_ = list(small)
    width = 0.8 / max(1, len(systems_))
    for i, s in enumerate(systems_):
        ys = [median(small[s][m]) if small[s].get(m) else 0 for m in metrics]
        ax.bar([j + i * width for j in range(len(metrics))], ys, width, label=labels[s])
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels(["get", "set", "in", "90/10 mix"])
    ax.set_ylabel("ns per operation (log; lower is better)")
    ax.set_title("Small operations")
    ax.legend(fontsize=7)

    ax = axes[0][1]
    arrays = data["results"].get("numpy", {})
    mibs = data["config"]["array_mib"]
    cols = [(op, mib) for mib in mibs for op in ("set", "get")]
    sys_a = list(arrays)
    width = 0.8 / max(1, len(sys_a))
    for i, s in enumerate(sys_a):
        ys = [median(arrays[s][f"{op}_{mib}MiB"]) if arrays[s].get(f"{op}_{mib}MiB") else 0
              for op, mib in cols]
        ax.bar([j + i * width for j in range(len(cols))], ys, width, label=labels[s])
    if arrays:
        floor = median(next(iter(arrays.values())).get(f"copy_r_{mibs[-1]}MiB", [0]))
        ax.axhline(floor, color="k", linestyle="--", linewidth=1, label="arr.copy()")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))])
    ax.set_xticklabels([f"{op} {mib} MiB" for op, mib in cols])
    ax.set_ylabel("GB/s (higher is better)")
    ax.set_title("NumPy arrays")
    ax.legend(fontsize=7)

    for ax, job, what in ((axes[1][0], "scale_read", "readers"),
                          (axes[1][1], "scale_write", "writers")):
        res = data["results"].get(job, {})
        counts = data["config"][what]
        for s, r in res.items():
            xs = [c for c in counts if r.get(f"{what}_{c}")]
            ax.plot(xs, [median(r[f"{what}_{c}"]) / 1e6 for c in xs], marker="o", label=labels[s])
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts)
        ax.set_xticklabels([str(c) for c in counts])
        ax.set_yscale("log")
        ax.set_xlabel(f"{what} (processes)")
        ax.set_ylabel("million ops/s, all processes (log)")
        ax.set_title(f"Scaling: small {'gets' if what == 'readers' else 'sets'}")
        ax.legend(fontsize=7)
    if zc:
        _plot_zc(data, zc, axes[2][0], axes[2][1])
    m = data["machine"]
    fig.suptitle(f"sharedbox benchmarks — {m['cpu']}, {m['usable_cpus']} CPUs, {m['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _plot_zc(data, zc, ax_time, ax_fill) -> None:
    """Issue 11's rows: time per operation against array size (log-log),
    and create_array's fill bandwidth against np.empty's."""
    sizes = _zc_sizes(data)
    for metric, title, style in (("set", "d[k] = arr (owner)", "s-"),
                                 ("get", "d[k] (a new array)", "o-"),
                                 ("view", "d.view(k)", "D-"),
                                 ("hand", "np.ndarray(buffer=shm.buf), by hand", "^--")):
        xs = [n for n in sizes if zc.get(f"{metric}_{n}")]
        ax_time.plot(xs, [median(zc[f"{metric}_{n}"]) / 1e3 for n in xs], style, label=title)
    ax_time.axhline(ZC_VIEW_LIMIT_NS / 1e3, color="k", linestyle=":", linewidth=1,
                    label=f"view target ({fmt_ns(ZC_VIEW_LIMIT_NS)})")
    ax_time.set_xscale("log", base=2)
    ax_time.set_yscale("log")
    ax_time.set_xticks(sizes)
    ax_time.set_xticklabels([fmt_size(n) for n in sizes])
    ax_time.set_xlabel("array size")
    ax_time.set_ylabel("µs per operation (log; lower is better)")
    ax_time.set_title("Zero-copy: view against get, set and a hand-made view")
    ax_time.legend(fontsize=7)

    mibs = data["config"].get("array_mib", [])
    cols = [(mib, fill, title.strip("`")) for mib in mibs for fill, title in ZC_FILLS
            if zc.get(f"fill_empty_{fill}_{mib}MiB")]
    width = 0.27
    for i, (metric, title) in enumerate((("fill_empty", "fresh np.empty + fill"),
                                         ("fill_create", "create_array + fill + publish"),
                                         ("cold_create", "the same, a new store's first block"))):
        ys = [median(zc[f"{metric}_{fill}_{mib}MiB"]) if zc.get(f"{metric}_{fill}_{mib}MiB")
              else 0 for mib, fill, _ in cols]
        ax_fill.bar([j + i * width for j in range(len(cols))], ys, width, label=title)
    tops = [median(v) for k, v in zc.items() if k.startswith(("fill_empty", "fill_create",
                                                               "cold_create")) and v]
    if tops:  # room above the bars for the legend
        ax_fill.set_ylim(0, 1.35 * max(tops))
    ax_fill.set_xticks([j + width for j in range(len(cols))])
    ax_fill.set_xticklabels([f"{mib} MiB\n{t}" for mib, _, t in cols], fontsize=8)
    ax_fill.set_ylabel("GB/s (higher is better)")
    ax_fill.set_title("Writing an array in place: create_array against np.empty")
    ax_fill.legend(fontsize=7, loc="upper left", ncol=3)


def update_docs(docs: str, markdown_text: str, plot_path) -> None:
    """Put the tables between the result markers of docs/benchmarks.md (the
    prose around them is written by hand) and the plot into docs/img/."""
    path = os.path.join(docs, "benchmarks.md")
    block = f"{BEGIN}\n{markdown_text}\n{END}"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if BEGIN in text and END in text:
            text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                          flags=re.S)
        else:
            text += "\n" + block + "\n"
    else:
        text = "# Benchmarks\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
    if plot_path:
        os.makedirs(os.path.join(docs, "img"), exist_ok=True)
        shutil.copyfile(plot_path, os.path.join(docs, "img", "benchmarks.png"))
