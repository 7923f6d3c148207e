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
                            "redisdict", "incr", "wait"}
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
    table = (out / "results.md").read_text()
    assert "### Targets" in table and "| sharedbox |" in table
    # The segments and stores the run made are gone.
    assert data["store_prefix"].startswith("sbxbench")
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(data["store_prefix"] + "_")]
