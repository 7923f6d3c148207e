"""Every script in examples/ runs, succeeds, prints what it promises and cleans up."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 120


def run_example(script):
    before = set(os.listdir("/dev/shm"))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=EXAMPLES.parent,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # No warnings (e.g. from multiprocessing's resource_tracker) and no traceback.
    assert proc.stderr == "", proc.stderr
    leftovers = set(os.listdir("/dev/shm")) - before
    name = re.search(r"created SharedDict '([^']+)'", out) or re.search(
        r"closed and unlinked '([^']+)'", out
    )
    assert name, out
    assert name.group(1) not in leftovers, f"{name.group(1)} was left in /dev/shm"
    assert f"closed and unlinked '{name.group(1)}'" in out
    return out


def test_examples_are_all_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "numpy_frames.py",
        "sensor_pipeline.py",
        "worker_pool_cache.py",
        "zero_copy_frames.py",
    ]


def test_sensor_pipeline():
    pytest.importorskip("numpy")
    out = run_example("sensor_pipeline.py")
    produced = re.search(r"producer: 200 batches of 1000 readings, sum ([0-9.]+)", out)
    assert produced, out
    sums = re.findall(r"consumer \d: read 200 batches from sensor temp_01, sum ([0-9.]+) \(matches\)", out)
    assert sums == [produced.group(1)] * 2, out
    assert "all consumers saw every reading" in out


def test_worker_pool_cache():
    out = run_example("worker_pool_cache.py")
    lookups = re.search(r"slow lookups: (\d+), cache hits: (\d+)", out)
    assert lookups, out
    misses, hits = map(int, lookups.groups())
    assert misses + hits == 200
    assert 10 <= misses <= 40  # each city at least once, at most once per worker
    assert "cache now holds 10 records; wrong answers: 0" in out
    assert out.rstrip().splitlines()[-2] == "ok"


def test_numpy_frames():
    pytest.importorskip("numpy")
    out = run_example("numpy_frames.py")
    assert "wrote 60 frames of 16 MiB (float32, shape (2048, 2048)) into one key" in out
    seen = re.search(r"reader process: (\d+) reads, (\d+) different frames seen, 0 torn, last frame 59", out)
    assert seen, out
    assert int(seen.group(1)) >= 1
    assert re.search(r"set: [0-9.]+ GB/s, get \(other process\): [0-9.]+ GB/s", out), out
    assert "every frame whole" in out


def test_zero_copy_frames():
    pytest.importorskip("numpy")
    out = run_example("zero_copy_frames.py")
    assert "producer: wrote 200 frames of 4 MiB (float32, shape (1024, 1024)) in place" in out
    seen = re.findall(r"consumer \d: (\d+) views, (\d+) different frames, 0 torn, 0 changed, "
                      r"last frame 199", out)
    assert len(seen) == 2, out
    for views, distinct in seen:
        assert int(views) >= int(distinct) >= 2
    timings = re.findall(r"consumer \d: view: [0-9.]+ us per frame, d\[key\]: [0-9.]+ us per "
                         r"frame \([0-9.]+ GB/s\); view is \d+x faster", out)
    assert len(timings) == 2, out
    assert re.search(r"producer: create_array \+ fill: [0-9.]+ GB/s, "
                     r"fill \+ d\[key\] = frame: [0-9.]+ GB/s", out), out
    assert "every frame whole" in out
