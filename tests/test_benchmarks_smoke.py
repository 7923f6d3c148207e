"""A --quick run of the benchmark suite (dict and sharedbox only), so that the
suite cannot rot.  It asserts that every job ran and produced figures, never
how fast anything was: speed is judged by the suite itself, not by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_benchmark_runs(tmp_path):
    out = tmp_path / "results"
    raw = tmp_path / "raw.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--systems", "dict,sharedbox",
         "--no-plot", "--out", str(out), "--json", str(raw), "--burst", "0.05"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(raw.read_text())
    assert data["errors"] == {}
    results = data["results"]
    assert set(results) == {"small", "iterate", "numpy", "scale_read", "scale_write",
                            "redisdict", "incr", "wait", "small_kib", "hotkey", "mixed",
                            "zerocopy"}
    # small and iterate run in rounds, the systems taking turns, each figure
    # pooling every round's samples (--quick: 2 rounds)
    rounds = data["config"]["rounds"]
    assert rounds >= 2
    small = results["small"]["sharedbox"]
    for metric in ("get_str", "get_int", "get_dict", "set_str", "contains_hit",
                   "contains_miss", "delete", "mix_90_10", "attach"):
        samples = small[metric]
        assert len(samples) == rounds * data["config"]["repeats"]
        assert all(x > 0 for x in samples)
    assert set(results["small"]["dict"]) >= {"get_str", "set_str", "delete"}
    # every way of walking the store (`for k in d`, keys(), items()) and len(d),
    # each checked by the worker (count; items: the values' sum, the last pair)
    for system in ("dict", "sharedbox"):
        it = results["iterate"][system]
        for metric in ("iter", "iterate", "items", "len"):
            want = data["config"]["iter_repeats" if metric != "len" else "repeats"]
            assert want >= data["config"]["repeats"]
            assert len(it[metric]) == rounds * want and all(x > 0 for x in it[metric])
    assert results["numpy"]["sharedbox"]["get_1MiB"]
    assert set(results["scale_read"]["sharedbox"]) == {"readers_1", "readers_2"}
    assert set(results["scale_write"]["sharedbox"]) == {"writers_1", "writers_2"}
    # The coordination jobs: every run's counter was exact (the suite fails
    # otherwise), and the wait job measured latency and idle CPU.
    incr = results["incr"]["sharedbox"]
    for variant in ("incr", "cas", "lock"):
        n = incr[f"{variant}_n"]
        for count in data["config"]["incr_procs"]:
            assert all(x > 0 for x in incr[f"{variant}_{count}"])
            assert incr[f"{variant}_{count}_totals"] == [count * n] * data["config"]["repeats"]
    wait = results["wait"]["sharedbox"]
    for metric in ("wait_median", "wait_p99", "poll_median", "wait_cpu", "poll_cpu"):
        assert len(wait[metric]) == data["config"]["repeats"] and all(x > 0 for x in wait[metric])
    # issue 14's rows: ~1 KiB values, the hot key (every read whole), the mixed store
    repeats = data["config"]["repeats"]
    kib = results["small_kib"]["sharedbox"]
    for op in ("get", "set"):
        for kind in ("str1k", "pdict1k", "floats100", "tuple3"):
            assert len(kib[f"{op}_{kind}"]) == repeats and all(x > 0 for x in kib[f"{op}_{kind}"])
    hot = results["hotkey"]["sharedbox"]
    assert len(hot["reads"]) == repeats and all(x > 0 for x in hot["reads"])
    assert hot["bad"] == [0] * repeats
    mixed = results["mixed"]["sharedbox"]
    for kind in ("int", "dict", "floats100", "tuple3", "str1k", "pdict1k"):
        # two passes per side per round (mixed, single, single, mixed; reversed in even rounds)
        assert len(mixed[f"mixed_{kind}"]) == 2 * repeats
        assert len(mixed[f"single_{kind}"]) == 2 * repeats
    # issue 11's rows: view, the hand-made view and get at every size (1 KiB and
    # the numpy job's 1 MiB with --quick), create_array against np.empty
    zc = results["zerocopy"]["sharedbox"]
    assert data["config"]["zc_bytes"] == [1 << 10, 1 << 20]
    for nbytes in data["config"]["zc_bytes"]:
        for metric in ("set", "get", "view", "hand"):
            samples = zc[f"{metric}_{nbytes}"]
            assert len(samples) == repeats and all(x > 0 for x in samples)
    for fill in ("copyto", "ones"):
        rounds = 64 * repeats  # 1 MiB: 64 rounds per repeat
        for side in ("empty", "create"):
            samples = zc[f"fill_{side}_{fill}_1MiB"]
            assert len(samples) == rounds and all(x > 0 for x in samples)
        for extra in ("inplace", "faults_empty", "faults_create"):
            assert len(zc[f"fill_{extra}_{fill}_1MiB"]) == rounds
        assert zc[f"fill_first_{fill}_1MiB"]["create"] > 0
        for metric in ("empty", "create", "faults_empty", "faults_create"):
            assert len(zc[f"cold_{metric}_{fill}_1MiB"]) == repeats
    table = (out / "results.md").read_text()
    assert "### Targets" in table and "| sharedbox |" in table
    assert "### Zero-copy arrays" in table and "`d.view(k)` of a 1 KiB array" in table
    for row in (f"| `for k in d` over {data['config']['iter_keys']:,} keys (whole loop) |",
                "| `for k, v in d.items()` (per key) |", "| `len(d)` (per call) |",
                "| get, 3-tuple (int, str, float) |",
                "| `len(d)`, sharedbox, per call |"):
        assert row in table, row
    # The segments and stores the run made are gone.
    assert data["store_prefix"].startswith("sbxbench")
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(data["store_prefix"] + "_")]


def test_compare_flags_slower_rows(tmp_path):
    """--compare's table: a row more than 10% slower than the previous run's
    median is flagged, a faster or equal one is not (synthetic results, so
    nothing here depends on the machine's speed)."""
    from benchmarks import report, run

    def results(get_str, set_str):
        return {"machine": {"date": "then"}, "config": {"repeats": 5, "n": 100},
                "labels": {"sharedbox": "sharedbox"},
                "results": {"small": {"sharedbox": {"get_str": get_str, "set_str": set_str}}}}

    previous = results([100, 101, 99, 100, 100], [200] * 5)
    now = results([111, 112, 113, 200, 90], [150] * 5)
    table, flagged = report.compare(previous, now, run.COMPARE_JOBS, run.COMPARE_SLOWER)
    assert flagged == ["sharedbox: get, str value"]
    assert "| sharedbox: get, str value | 100 ns | 112 ns | 1.12× | FLAG |" in table
    assert "| sharedbox: set, str value | 200 ns | 150 ns | 0.75× |  |" in table


def test_iterate_report_rows():
    """The iterate job's rows and targets from synthetic results (ns per key,
    ns per call for len): whole loops in the time table, per-key ratios, a
    system without a way shows "—", and the targets (÷ dict, py-lmdb's cursor
    ÷ sharedbox, the fastest other shared system ÷ sharedbox, len(d) in ns)."""
    from benchmarks import report, run

    def flat(x):
        return [x] * 3

    it = {
        "dict": {"iter": flat(10), "iterate": flat(10), "items": flat(20), "len": flat(40)},
        "sharedbox": {"iter": flat(15), "iterate": flat(12), "items": flat(50), "len": flat(80)},
        # the old sharedbox has no __iter__: no "iter" samples
        "sharedbox-0.2.4": {"iterate": flat(60), "items": flat(200), "len": flat(100)},
        "lmdb": {"iter": flat(30), "iterate": flat(30), "items": flat(100), "len": flat(900)},
        "ultradict": {"iter": flat(10), "iterate": flat(24), "items": flat(40), "len": flat(500)},
    }
    labels = {"dict": "dict (in-process)", "sharedbox": "sharedbox",
              "sharedbox-0.2.4": "sharedbox 0.2.4 (PyPI)", "lmdb": "py-lmdb (txn per loop)",
              "ultradict": "UltraDict"}
    data = {"machine": {"date": "then", "cpu": "cpu", "usable_cpus": 2, "cpus": 2,
                        "memory": "1 GiB", "os": "os", "python": "3", "dev_shm_free": "1 GiB"},
            "config": {"repeats": 3, "n": 100, "iter_keys": 1000, "len_calls": 1000},
            "labels": labels, "versions": {}, "skipped": {}, "errors": {},
            "results": {"iterate": it}}
    rows = {r[0]: r[1:] for r in report.issue14_targets(data)}
    assert rows["`for k in d` over 1,000 keys ÷ in-process dict"] == ("1.50×", "≤ 2×", "met")
    assert rows["`for k in d` over 1,000 keys: py-lmdb's cursor ÷ sharedbox"] == (
        "2.00×", "> 1×", "met")
    assert rows["iteration, `for k in d` over 1,000 keys: fastest other shared system ÷ "
                "sharedbox"] == ("0.67× (UltraDict 10 µs, sharedbox 15 µs)", "> 1×", "**not met**")
    assert rows["iteration, `for k in d.keys()` over 1,000 keys: fastest other shared system "
                "÷ sharedbox"] == ("2.00× (UltraDict 24 µs, sharedbox 12 µs)", "> 1×", "met")
    assert rows["`for k, v in d.items()` over 1,000 keys ÷ in-process dict"] == (
        "2.50×", "≤ 2×", "**not met**")
    assert rows["`len(d)`, sharedbox, per call"] == ("80 ns", "≤ 100 ns", "met")
    table = report.markdown(data)
    assert ("| `for k in d` over 1,000 keys (whole loop) | 10 µs ±0% | 15 µs ±0% | — | "
            "30 µs ±0% | 10 µs ±0% |") in table
    assert "| `len(d)` (per call) | 40 ns ±0% | 80 ns ±0% | 100 ns ±0% | 900 ns ±0% |" in table
    assert "| `for k, v in d.items()` (per key) | 0.40× | 1.00× | 4.00× | 2.00× | 0.80× |" in table
    # --compare covers the rows too
    previous = {"machine": {"date": "then"}, "config": {"repeats": 3, "n": 100},
                "results": {"iterate": {"sharedbox": {"items": flat(40)}}}}
    table, flagged = report.compare(previous, data, run.COMPARE_JOBS, run.COMPARE_SLOWER)
    assert flagged == ["sharedbox: `for k, v in d.items()` (per key)"]
    assert "| sharedbox: `for k, v in d.items()` (per key) | 40 ns | 50 ns | 1.25× | FLAG |" in table


def test_zerocopy_report_ratios(tmp_path):
    """The zerocopy job's target rows and tables from synthetic results: the
    ratios (get ÷ view at 64 MiB, view ÷ the hand-made view, create_array's
    fill ÷ np.empty's) with the goal beside each, and the plot's extra row."""
    from benchmarks import report

    sizes = [1 << 10, 8 << 20, 64 << 20, 256 << 20]
    zc = {}
    for n in sizes:
        zc[f"view_{n}"] = [2_000, 2_100, 1_900]
        zc[f"hand_{n}"] = [800, 800, 800]
        zc[f"get_{n}"] = [n / 4, n / 4, n / 4]  # 4 bytes per ns
        zc[f"set_{n}"] = [n / 5] * 3
    zc[f"view_{256 << 20}"] = [6_000] * 3  # over the 5 µs line
    for mib in (8, 64):
        for fill in ("copyto", "ones"):
            zc[f"fill_empty_{fill}_{mib}MiB"] = [5.0, 5.0, 5.0]
            zc[f"fill_create_{fill}_{mib}MiB"] = [4.75 if fill == "copyto" else 4.0] * 3
            zc[f"fill_inplace_{fill}_{mib}MiB"] = [True] * 3
            zc[f"fill_faults_empty_{fill}_{mib}MiB"] = [mib * 256] * 3
            zc[f"fill_faults_create_{fill}_{mib}MiB"] = [0, 2, 1]
            zc[f"cold_empty_{fill}_{mib}MiB"] = [4.0] * 3
            zc[f"cold_create_{fill}_{mib}MiB"] = [2.0] * 3
            zc[f"cold_faults_create_{fill}_{mib}MiB"] = [mib * 256] * 3
    data = {"machine": {"date": "then", "cpu": "cpu", "usable_cpus": 2, "cpus": 2,
                        "memory": "1 GiB", "os": "os", "python": "3", "dev_shm_free": "1 GiB"},
            "config": {"repeats": 3, "n": 100, "array_mib": [8, 64], "zc_bytes": sizes,
                       "zc_ops": 1000, "readers": [1, 2], "writers": [1, 2]},
            "labels": {"sharedbox": "sharedbox"}, "versions": {}, "skipped": {}, "errors": {},
            "results": {"zerocopy": {"sharedbox": zc}}}
    # ratios of samples taken in pairs: the median of the pairs' ratios
    assert report.paired([2, 30, 100], [1, 10, 200]) == 2
    assert report.paired([2, 30], [1, 10, 200]) == 16 / 10  # no pairs: ratio of medians
    rows = {r[0]: r[1:] for r in report.zc_targets(data)}
    assert rows["`d.view(k)` of a 1 KiB array, in a second process (view + release)"] == (
        "2.0 µs", "≤ 5.0 µs", "met")
    assert rows["`d.view(k)` of a 256 MiB array, in a second process (view + release)"][2] == (
        "**not met**")
    get_view = rows["`d[k]` ÷ `d.view(k)`, 64 MiB array, same process"]
    assert get_view == ("8,389× (16.8 ms vs 2.0 µs)", "≥ 1,000×", "met")
    hand = ("`d.view(k)` ÷ hand-made `np.ndarray(shape, dtype, buffer=shm.buf)` over "
            "multiprocessing.shared_memory, ")
    assert rows[hand + "1 KiB"] == ("2.50× (2.0 µs vs 800 ns)", "≤ 2×", "**not met**")
    fill = ("`create_array` + fill + publish of 64 MiB ÷ fill of a fresh `np.empty`, "
            "same process (fill: ")
    assert rows[fill + "`np.copyto(arr, src)`; block reused)"] == (
        "95% (4.8 vs 5.0 GB/s)", "≥ 90%", "met")
    assert rows[fill + "`arr[...] = 1`; block reused)"] == (
        "80% (4.0 vs 5.0 GB/s)", "≥ 90%", "**not met**")
    assert rows[fill + "`arr[...] = 1`; cold: a new store's first block)"] == (
        "50% (2.0 vs 4.0 GB/s)", "≥ 90%", "**not met**")
    table = report.markdown(data)
    assert "| `d.view(k)` (no copy) | 2.0 µs ±5% | 2.0 µs ±5% | 2.0 µs ±5% | 6.0 µs ±0% |" in table
    assert "| `d[k]` ÷ `d.view(k)` | 0.13× | 1,049× | 8,389× | 11,185× |" in table
    assert ("| 64 MiB | `np.copyto(arr, src)` | 5.00 ±0% | 4.75 ±0% | 95% | 2.00 ±0% | 50% | "
            "yes | 16,384 / 1 / 16,384 | 5.00 ±0% |") in table
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert report.plot(data, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_rounds_take_turns():
    # small and iterate: every system once a round, round after round, so that
    # a drift of the machine's speed spreads over every system alike; the
    # other jobs run once per system
    from benchmarks import run

    order = run.turns(["small", "mixed", "iterate"], ["sharedbox", "dict", "lmdb"], 3)
    small = [(s, r) for job, s, r in order if job == "small"]
    assert small == [(s, r) for r in (1, 2, 3) for s in ("dict", "sharedbox", "lmdb")]
    assert [(s, r) for job, s, r in order if job == "mixed"] == [
        ("dict", 1), ("sharedbox", 1), ("lmdb", 1)]
    assert [job for job, _, _ in order] == ["small"] * 9 + ["mixed"] * 3 + ["iterate"] * 9
    assert run.turns(["small"], ["dict"], 1) == [("small", "dict", 1)]
