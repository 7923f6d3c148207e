"""Run the benchmark suite: `python -m benchmarks [--quick] [--json PATH] ...`.

Each (workload, system) pair runs in fresh processes: an owner that creates
the store and times the writes, and readers that attach and time the reads
(see worker.py).  Results go to benchmarks/results/ (markdown, JSON, PNG);
`--update-docs` also writes them into docs/benchmarks.md and docs/img/.
`--compare PATH` runs the small-operation rows and flags each row more than
10% slower than in the earlier results file PATH (exit status 3 if any).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks import report, systems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_SHAREDBOX = "sharedbox==0.2.4"
OLD_VENV = os.path.join(ROOT, ".bench-venvs", "sharedbox-0.2.4")

JOBS = {
    "small": ["dict", "sharedbox", "sharedbox-0.2.4", "lmdb", "lmdb-op", "redis",
              "manager", "ultradict", "shm-dict"],
    # iter_keys keys walked each way a user walks them (`for k in d`, keys(),
    # items()), and len(d)
    "iterate": ["dict", "sharedbox", "sharedbox-0.2.4", "lmdb", "redis", "manager",
                "ultradict", "shm-dict"],
    "numpy": ["sharedbox", "sharedbox-0.2.4", "shm", "lmdb", "redis", "manager"],
    "scale_read": ["dict", "sharedbox", "sharedbox-0.2.4", "lmdb", "redis"],
    "scale_write": ["dict", "sharedbox", "sharedbox-0.2.4", "lmdb-op", "redis"],
    # RedisDict against hand-written redis-py on the same server, both timed in
    # the same processes (worker.py: *_redisdict)
    "redisdict": ["redisdict"],
    # issue 12's coordination API: one counter incremented from 1, 2, 4
    # processes (each system's own atomic or locked way), and how soon and at
    # what CPU cost a waiting process sees a change (sharedbox only: wait
    # against a 1 ms polling loop)
    "incr": ["sharedbox", "manager", "ultradict", "redis"],
    "wait": ["sharedbox"],
    # issue 14: get/set of pickled values (1 KiB str, ~1 KiB pickled dict,
    # 100-float list, 3-tuple), the same systems and protocol as "small"
    "small_kib": ["dict", "sharedbox", "sharedbox-0.2.4", "lmdb", "lmdb-op", "redis",
                  "manager", "ultradict", "shm-dict"],
    # one key read by 2 processes while a third overwrites it (every read checked)
    "hotkey": ["sharedbox", "sharedbox-0.2.4", "lmdb", "lmdb-op", "redis", "manager",
               "ultradict", "shm-dict"],
    # one store of six value kinds against a store per kind: overwrite passes
    "mixed": ["dict", "sharedbox", "lmdb"],
    # issue 11: d.view(k) against d[k] and a hand-made np.ndarray over
    # multiprocessing.shared_memory (timed in the same processes, alternated),
    # and create_array + fill + publish against filling a fresh np.empty
    "zerocopy": ["sharedbox"],
}

# Jobs whose rows are per-operation loops compared across systems: they run
# `rounds` times, every system once per round in fresh processes, the systems
# taking turns, and each figure pools its samples over the rounds.  This
# machine's speed drifts over minutes (the dict's own small str get read 81 ns
# in one run and 209 ns in another of the same hour), and each process draws
# its own memory layout; with one turn per system, both went straight into
# every ratio between two systems (sharedbox ÷ dict for a small str get read
# 1.2× to 5.0× over 16 runs of two builds).  Turns spread both over every side.
ROUNDS_JOBS = ("small", "iterate")

# the rows --compare checks: every per-operation figure of these jobs
COMPARE_JOBS = ("small", "small_kib", "iterate")
COMPARE_SLOWER = 1.10  # a row is flagged when now / previous exceeds this

FULL = dict(n=20_000, min_ops=20, repeats=5, rounds=3, iter_keys=100_000, array_mib=[8, 64],
            burst_seconds=1.0, scale_keys=5_000, readers=[1, 2, 4], writers=[1, 2],
            bulk_keys=10_000)
QUICK = dict(n=2_000, min_ops=20, repeats=2, rounds=2, iter_keys=5_000, array_mib=[1],
             burst_seconds=0.2, scale_keys=1_000, readers=[1, 2], writers=[1, 2],
             bulk_keys=1_000)

# iterate: calls of len(d) per timed loop (divided by the system's slow_factor)
FULL.update(len_calls=100_000)
QUICK.update(len_calls=5_000)
# incr: increments per process (divided per variant, systems.py incr_variants);
# wait: ping-pong round trips per run and seconds of each idle wait
FULL.update(incr_n=300_000, incr_procs=[1, 2, 4], wait_rounds=2_000, idle_seconds=1.0)
QUICK.update(incr_n=5_000, incr_procs=[1, 2], wait_rounds=200, idle_seconds=0.2)
# hotkey: seconds per reader burst; mixed: keys of each kind
FULL.update(hot_seconds=1.0, mixed_n=20_000)
QUICK.update(hot_seconds=0.2, mixed_n=1_000)
# zerocopy: array sizes beyond array_mib (bytes; the job times every size of
# array_mib too) and views per timed loop
FULL.update(zc_extra_bytes=[1 << 10, 256 << 20], zc_ops=10_000)
QUICK.update(zc_extra_bytes=[1 << 10], zc_ops=500)


def zc_sizes(cfg: dict) -> list:
    """The array sizes of the zerocopy job, in bytes: 1 KiB, every size of
    the numpy job, and (full run) 256 MiB."""
    return sorted(set(cfg["zc_extra_bytes"]) | {mib << 20 for mib in cfg["array_mib"]})


class WorkerFailed(Exception):
    pass


class Worker:
    """A worker process and the events it prints."""

    def __init__(self, python: str, job: dict, env: dict):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [python, "-m", "benchmarks.worker", json.dumps(job)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, cwd=ROOT, env=env,
        )
        self.events: "queue.Queue[dict]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                self.events.put(json.loads(line[2:]))
        self.events.put({"event": "exit"})

    def expect(self, name: str, timeout: float) -> dict:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise WorkerFailed(f"no '{name}' from the worker within {timeout:.0f} s") from None
        if event["event"] == name or event["event"] == "skip":
            return event
        if event["event"] == "error":
            raise WorkerFailed(event["error"] + "\n" + event.get("trace", ""))
        self.log.seek(0)
        raise WorkerFailed(f"expected '{name}', got '{event['event']}': {self.log.read()[-2000:]}")

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- the environment: redis-server, the old sharedbox's venv ------------------
class RedisServer:
    def __init__(self):
        exe = shutil.which("redis-server")
        if exe is None:
            raise systems.Unavailable(
                "redis-server not found (Debian: benchmarks/setup.sh installs it)"
            )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="sbxbench-redis-")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise systems.Unavailable("redis-server did not answer within 10 s")
            time.sleep(0.05)
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        self.version = next((w[2:] for w in out.split() if w.startswith("v=")), "?")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def old_sharedbox_python(progress) -> str:
    """The interpreter of a venv holding the old public sharedbox, which has
    our import name and so cannot share our environment."""
    python = os.path.join(OLD_VENV, "bin", "python")
    if not os.path.exists(python):
        progress(f"creating {os.path.relpath(OLD_VENV, ROOT)} for {OLD_SHAREDBOX} ...")
        try:
            import numpy

            subprocess.run([sys.executable, "-m", "venv", OLD_VENV], check=True,
                           capture_output=True)
            subprocess.run([python, "-m", "pip", "install", "-q", OLD_SHAREDBOX,
                            f"numpy=={numpy.__version__}"], check=True, capture_output=True,
                           text=True)
        except (subprocess.CalledProcessError, ImportError) as exc:
            shutil.rmtree(OLD_VENV, ignore_errors=True)
            detail = getattr(exc, "stderr", "") or str(exc)
            raise systems.Unavailable(f"could not install {OLD_SHAREDBOX}: {detail.strip()[-300:]}")
    return python


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    shm = shutil.disk_usage("/dev/shm")
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory": mem,
        "dev_shm_free": f"{shm.free / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -- running one (job, system) pair ---------------------------------------------
class Runner:
    def __init__(self, cfg: dict, env: dict, pythons: dict, progress):
        self.cfg, self.env, self.pythons, self.progress = cfg, env, pythons, progress
        self.prefix = f"sbxbench{os.getpid()}"
        self.counter = 0

    def spec(self, job: str, system: str, role: str, **extra) -> dict:
        segment = 1 << 30 if job == "numpy" else 256 << 20
        if job == "zerocopy":
            # every size twice (an overwrite holds the old value and the new
            # one for a moment), the fill blocks, and room for the allocator
            segment = max(segment, 3 * sum(self.cfg["zc_bytes"])
                          + 3 * (max(self.cfg["array_mib"]) << 20))
        n = self.cfg["n"]
        max_keys = max(4 * n, 2 * self.cfg["iter_keys"], 64 * self.cfg["scale_keys"])
        if job == "mixed":  # six kinds of mixed_n keys in one store
            max_keys = max(max_keys, 8 * self.cfg["mixed_n"])
        if job == "small_kib":  # shared-memory-dict's one block: 3 kinds of ~1 KiB, a tuple
            extra.setdefault("shm_dict_bytes", 3 * n * 1300 + n * 100 + (1 << 20))
        return dict(self.cfg, job=job, system=system, role=role,
                    name=f"{self.prefix}_{self.counter}", segment_bytes=segment,
                    max_keys=max_keys, **extra)

    def start(self, spec: dict) -> Worker:
        python = self.pythons.get(spec["system"], sys.executable)
        env = self.env
        if isinstance(python, tuple):  # (interpreter, a folder to put first on sys.path)
            python, path = python
            env = dict(env, PYTHONPATH=os.pathsep.join([path, env.get("PYTHONPATH", "")]))
        return Worker(python, spec, env)

    def run(self, job: str, system: str) -> dict:
        self.counter += 1
        timeout = 900
        workers = []
        owner = self.start(self.spec(job, system, "owner"))
        workers.append(owner)
        try:
            first = owner.expect("version", timeout)
            if first["event"] == "skip":
                return {"skip": first["reason"]}
            out = {"version": first["version"], "results": {}}
            out["results"].update(owner.expect("ready", timeout)["results"])
            if job in ("small", "iterate", "numpy", "redisdict", "small_kib", "zerocopy"):
                reader = self.start(self.spec(job, system, "reader"))
                workers.append(reader)
                reader.expect("version", timeout)
                out["results"].update(reader.expect("result", timeout)["results"])
                reader.finish()
                if job == "small":
                    owner.send("delete")
                    out["results"].update(owner.expect("result", timeout)["results"])
            elif job == "incr":
                out["results"].update(self.incr(system, owner, workers, timeout))
            elif job == "wait":
                out["results"].update(self.wait(system, owner, workers, timeout))
            elif job == "hotkey":
                out["results"].update(self.hotkey(system, workers, timeout))
            elif job == "mixed":
                pass  # all of it happens in the owner
            else:
                out["results"].update(self.scale(job, system, workers, timeout))
            owner.send("stop")
            owner.finish()
            if owner.proc.returncode:
                owner.expect("exit", 10)  # raises with the worker's own error, if it sent one
                raise WorkerFailed(f"owner exited with status {owner.proc.returncode}")
            return out
        finally:
            for w in workers:
                w.kill()

    def scale(self, job: str, system: str, workers: list, timeout: float) -> dict:
        role, levels, label = (
            ("scale_reader", self.cfg["readers"], "readers")
            if job == "scale_read" else ("scale_writer", self.cfg["writers"], "writers")
        )
        results = {}
        for count in levels:
            group = [self.start(self.spec(job, system, role, index=i)) for i in range(count)]
            workers.extend(group)
            for w in group:
                w.expect("version", timeout)
                w.expect("attached", timeout)
            samples = []
            for _ in range(self.cfg["repeats"]):
                for w in group:
                    w.send(f"go {self.cfg['burst_seconds']}")
                bursts = [w.expect("burst", timeout) for w in group]
                samples.append(sum(b["ops"] / b["seconds"] for b in bursts))
            for w in group:
                w.send("stop")
                w.finish()
            results[f"{label}_{count}"] = samples
        return results

    def incr(self, system: str, owner: Worker, workers: list, timeout: float) -> dict:
        """Each count of processes increments one counter, every variant of
        the system, `repeats` times; every run's final total must be exactly
        processes x N.  Throughput: all increments over the span from the
        common start to the last process's end."""
        cfg = self.cfg
        results: dict = {}
        for count in cfg["incr_procs"]:
            group = [self.start(self.spec("incr", system, "incr_worker", index=i))
                     for i in range(count)]
            workers.extend(group)
            for w in group:
                w.expect("version", timeout)
                w.expect("attached", timeout)
            for variant, divisor in systems.SYSTEMS[system].incr_variants.items():
                n = max(cfg["min_ops"], cfg["incr_n"] // divisor)
                rates, totals = [], []
                for _ in range(cfg["repeats"]):
                    owner.send("reset")
                    owner.expect("reset", timeout)
                    start = time.monotonic_ns() + 100_000_000  # all start together
                    for w in group:
                        w.send(f"go {variant} {n} {start}")
                    bursts = [w.expect("burst", timeout) for w in group]
                    owner.send("total")
                    total = owner.expect("total", timeout)["total"]
                    if total != count * n:
                        raise WorkerFailed(
                            f"LOST UPDATES: {system} {variant}, {count} processes x {n:,} "
                            f"increments left the counter at {total!r}, not {count * n:,}")
                    totals.append(total)
                    span = max(b["t1"] for b in bursts) - min(b["t0"] for b in bursts)
                    rates.append(count * n / span * 1e9)
                results[f"{variant}_{count}"] = rates
                results[f"{variant}_{count}_totals"] = totals
                results[f"{variant}_n"] = n
            for w in group:
                w.send("stop")
                w.finish()
        owner.send("end")
        return results

    def wait(self, system: str, owner: Worker, workers: list, timeout: float) -> dict:
        """A ping-pong of wait_rounds changes between the owner (setter) and a
        waiter, with d.wait and with a 1 ms polling loop, `repeats` times;
        then the CPU of idle waits of idle_seconds."""
        cfg = self.cfg
        waiter = self.start(self.spec("wait", system, "waiter"))
        workers.append(waiter)
        waiter.expect("version", timeout)
        waiter.expect("attached", timeout)
        results: dict = {}
        for mode in ("wait", "poll"):
            for _ in range(cfg["repeats"]):
                owner.send(f"ping {cfg['wait_rounds']}")
                owner.expect("armed", timeout)
                waiter.send(f"pong {mode} {cfg['wait_rounds']}")
                got = waiter.expect("latencies", timeout)
                owner.expect("pinged", timeout)
                for stat in ("median", "p99", "max"):
                    results.setdefault(f"{mode}_{stat}", []).append(got[stat])
        for mode in ("wait", "poll", "sleep"):
            for _ in range(cfg["repeats"]):
                waiter.send(f"idle {mode} {cfg['idle_seconds']}")
                got = waiter.expect("idle", timeout)
                results.setdefault(f"{mode}_cpu", []).append(got["cpu_ns"])
                results.setdefault(f"{mode}_switches", []).append(got["switches"])
                results.setdefault(f"{mode}_idle_s", []).append(got["seconds"])
        results["rounds"] = cfg["wait_rounds"]
        waiter.send("stop")
        waiter.finish()
        owner.send("end")
        return results

    def hotkey(self, system: str, workers: list, timeout: float) -> dict:
        """Two readers read the hot key in bursts of hot_seconds, `repeats`
        times, while a writer overwrites it without pause; the figure is the
        readers' reads per second together.  Every value read is checked
        (whole, checksum right, never older than the one before)."""
        cfg = self.cfg
        writer = self.start(self.spec("hotkey", system, "hot_writer"))
        readers = [self.start(self.spec("hotkey", system, "hot_reader", index=i))
                   for i in range(2)]
        workers.extend([writer] + readers)
        for w in [writer] + readers:
            w.expect("version", timeout)
            w.expect("attached", timeout)
        writer.send("write")
        time.sleep(0.05)
        results: dict = {"reads": [], "bad": [], "stale": [], "seen": []}
        for _ in range(cfg["repeats"]):
            for r in readers:
                r.send(f"go {cfg['hot_seconds']}")
            bursts = [r.expect("burst", timeout) for r in readers]
            results["reads"].append(sum(b["ops"] / b["seconds"] for b in bursts))
            results["bad"].append(sum(b["bad"] for b in bursts))
            results["stale"].append(sum(b["stale"] for b in bursts))
            results["seen"].append(sum(b["seen"] for b in bursts))
        writer.send("stop")
        done = writer.expect("written", timeout)
        results["writes"] = [done["writes"] / done["seconds"]]
        for w in [writer] + readers:
            if w is not writer:
                w.send("stop")
            w.finish()
        return results

    def cleanup(self) -> None:
        """Remove whatever a failed worker left in /dev/shm."""
        for path in glob.glob(f"/dev/shm/*{self.prefix}_*"):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def turns(jobs: list, systems_: list, rounds: int) -> list:
    """The (job, system, round) runs in order: job by job; a ROUNDS_JOBS job
    runs each of its systems once a round, round after round."""
    schedule = []
    for job in jobs:
        job_systems = [s for s in JOBS[job] if s in systems_]
        job_rounds = rounds if job in ROUNDS_JOBS else 1
        schedule += [(job, s, r) for r in range(1, job_rounds + 1) for s in job_systems]
    return schedule


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: small sizes, 2 repeats")
    p.add_argument("--json", metavar="PATH", help="also write the raw results as JSON ('-': stdout)")
    p.add_argument("--systems", help="comma-separated subset, e.g. dict,sharedbox,lmdb")
    p.add_argument("--jobs", help=f"comma-separated subset of {','.join(JOBS)}")
    p.add_argument("--repeats", type=int, help="repeats per figure (median reported)")
    p.add_argument("--rounds", type=int,
                   help="turns per system of the jobs " + ",".join(ROUNDS_JOBS) +
                        " (their samples pooled)")
    p.add_argument("--readers", help="reader process counts, e.g. 1,2,4,8,16")
    p.add_argument("--writers", help="writer process counts, e.g. 1,2,4")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                   help="folder for results.md, results.json and benchmarks.png")
    p.add_argument("--update-docs", action="store_true",
                   help="write the tables into docs/benchmarks.md and the plot into docs/img/")
    p.add_argument("--no-plot", action="store_true", help="skip the matplotlib plot")
    p.add_argument("--burst", type=float, help="seconds per timed burst in the scaling jobs")
    p.add_argument("--bulk-keys", type=int, help="keys of the redisdict job's update/items")
    p.add_argument("--incr-procs", help="process counts of the incr job, e.g. 1,2,4,8")
    p.add_argument("--wait-rounds", type=int, help="ping-pong round trips per run of the wait job")
    p.add_argument("--compare", metavar="PATH",
                   help="run the small-operation rows (jobs " + ",".join(COMPARE_JOBS) +
                        " unless --jobs says otherwise) and compare each row's median with "
                        "the results file PATH (a results.json of an earlier run); a row "
                        f"more than {COMPARE_SLOWER - 1:.0%}% slower is flagged, and the "
                        "exit status is 3 if any is")
    p.add_argument("--old-sharedbox-path", metavar="DIR",
                   help=f"a folder holding {OLD_SHAREDBOX} (pip install --target DIR), used "
                        "instead of creating .bench-venvs/ (e.g. on a machine without PyPI)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats:
        cfg["repeats"] = args.repeats
    elif args.compare:
        cfg["repeats"] = max(cfg["repeats"], 5)  # medians of 5, even with --quick
    # A walk of the store takes milliseconds, so the walks (`for k in d`,
    # keys(), items()) take three times the repeats: with five samples one
    # slow pass on a noisy machine could move a walk's median.
    cfg["iter_repeats"] = 3 * cfg["repeats"]
    if args.rounds:
        cfg["rounds"] = args.rounds
    if args.burst:
        cfg["burst_seconds"] = args.burst
    if args.bulk_keys:
        cfg["bulk_keys"] = args.bulk_keys
    if args.incr_procs:
        cfg["incr_procs"] = [int(x) for x in args.incr_procs.split(",")]
    if args.wait_rounds:
        cfg["wait_rounds"] = args.wait_rounds
    for name in ("readers", "writers"):
        if getattr(args, name):
            cfg[name] = [int(x) for x in getattr(args, name).split(",")]
    cfg["zc_bytes"] = zc_sizes(cfg)
    previous = None
    if args.compare:
        try:
            with open(args.compare) as f:
                previous = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"--compare: cannot read {args.compare}: {exc}", file=sys.stderr)
            return 2
        if not args.jobs:
            args.jobs = ",".join(COMPARE_JOBS)
    jobs = args.jobs.split(",") if args.jobs else list(JOBS)
    wanted = set(args.systems.split(",")) if args.systems else set(systems.SYSTEMS)
    for name in jobs:
        if name not in JOBS:
            print(f"unknown job {name!r}; choose from {', '.join(JOBS)}", file=sys.stderr)
            return 2
    unknown = wanted - set(systems.SYSTEMS)
    if unknown:
        print(f"unknown systems {sorted(unknown)}; choose from {', '.join(systems.SYSTEMS)}",
              file=sys.stderr)
        return 2

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    data = {"machine": machine(), "config": cfg, "versions": {}, "skipped": {}, "errors": {},
            "results": {job: {} for job in jobs}, "labels": systems.labels(),
            "slow_factors": {k: cls.slow_factor for k, cls in systems.SYSTEMS.items()}}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    pythons = {}
    redis = None
    needed = {s for job in jobs for s in JOBS[job] if s in wanted}
    if needed & {"redis", "redisdict"}:
        try:
            redis = RedisServer()
            env["SBX_BENCH_REDIS_PORT"] = str(redis.port)
            env["SBX_BENCH_REDIS_VERSION"] = redis.version
        except systems.Unavailable as exc:
            data["skipped"]["redis"] = str(exc)
    if "sharedbox-0.2.4" in needed and args.old_sharedbox_path:
        pythons["sharedbox-0.2.4"] = (sys.executable, os.path.abspath(args.old_sharedbox_path))
    elif "sharedbox-0.2.4" in needed:
        try:
            pythons["sharedbox-0.2.4"] = old_sharedbox_python(progress)
        except systems.Unavailable as exc:
            data["skipped"]["sharedbox-0.2.4"] = str(exc)

    schedule = turns(jobs, [s for s in needed if s not in data["skipped"]], cfg["rounds"])
    runner = Runner(cfg, env, pythons, progress)
    started = time.monotonic()
    try:
        for i, (job, system, round_) in enumerate(schedule, 1):
            if system in data["skipped"] or f"{job}/{system}" in data["errors"]:
                continue  # found out in an earlier round
            t0 = time.monotonic()
            turn = f" round {round_}/{cfg['rounds']}" if job in ROUNDS_JOBS else ""
            progress(f"[{i:2d}/{len(schedule)}] {job:<11} {system:<16}{turn} ...")
            try:
                out = runner.run(job, system)
            except WorkerFailed as exc:
                data["errors"][f"{job}/{system}"] = str(exc)
                progress(f"        FAILED: {str(exc).strip().splitlines()[-1]}")
                continue
            if "skip" in out:
                data["skipped"][system] = out["skip"]
                progress(f"        skipped: {out['skip']}")
                continue
            data["versions"][system] = out["version"]
            pooled = data["results"][job].get(system)
            if pooled is None:
                data["results"][job][system] = out["results"]
            else:  # a later round: every figure of these jobs is a list of samples
                for figure, samples in out["results"].items():
                    pooled[figure] = pooled.get(figure, []) + samples
            progress(f"        {time.monotonic() - t0:5.1f} s"
                     f"   (elapsed {time.monotonic() - started:.0f} s)")
    finally:
        runner.cleanup()
        if redis is not None:
            redis.stop()

    data["seconds"] = round(time.monotonic() - started, 1)
    data["store_prefix"] = runner.prefix
    markdown = report.markdown(data)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    plot_path = None
    if not args.no_plot:
        plot_path = os.path.join(args.out, "benchmarks.png")
        if not report.plot(data, plot_path):
            plot_path = None
    if args.json == "-":
        json.dump(data, sys.stdout, indent=1)
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    if args.update_docs:
        report.update_docs(os.path.join(ROOT, "docs"), markdown, plot_path)
    if args.json != "-":
        print(markdown)
    for key, err in data["errors"].items():
        print(f"error in {key}: {err}", file=sys.stderr)
    if data["errors"]:
        return 1
    if previous is not None:
        table, flagged = report.compare(previous, data, COMPARE_JOBS, COMPARE_SLOWER)
        with open(os.path.join(args.out, "compare.md"), "w") as f:
            f.write(table)
        print(f"\n### Compared with {args.compare}\n\n{table}")
        if flagged:
            print(f"{len(flagged)} row(s) more than {COMPARE_SLOWER - 1:.0%} slower: "
                  + ", ".join(flagged), file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
