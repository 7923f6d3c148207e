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
                            "redisdict", "incr", "wait", "small_kib", "hotkey", "mixed"}
    small = results["small"]["sharedbox"]
    for metric in ("get_str", "get_int", "get_dict", "set_str", "contains_hit",
                   "contains_miss", "delete", "mix_90_10", "attach"):
        samples = small[metric]
        assert len(samples) == data["config"]["repeats"] and all(x > 0 for x in samples)
    assert set(results["small"]["dict"]) >= {"get_str", "set_str", "delete"}
    assert results["iterate"]["sharedbox"]["iterate"]
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
        for kind in ("str1k", "pdict1k", "floats100"):
            assert len(kib[f"{op}_{kind}"]) == repeats and all(x > 0 for x in kib[f"{op}_{kind}"])
    hot = results["hotkey"]["sharedbox"]
    assert len(hot["reads"]) == repeats and all(x > 0 for x in hot["reads"])
    assert hot["bad"] == [0] * repeats
    mixed = results["mixed"]["sharedbox"]
    for kind in ("int", "dict", "floats100", "tuple3", "str1k", "pdict1k"):
        assert len(mixed[f"mixed_{kind}"]) == repeats and len(mixed[f"single_{kind}"]) == repeats
    table = (out / "results.md").read_text()
    assert "### Targets" in table and "| sharedbox |" in table
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
