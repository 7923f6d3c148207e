"""The command line (`sharedbox list | info | dump | rm | demo`).

Most tests call sharedbox._cli.main() in this process and read its output with
capsys; the last ones run the real `python -m sharedbox` and `sharedbox` script.
Expected values come from the SharedDict itself, not from copied output.
"""

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

import sharedbox
from sharedbox import SharedDict, _cli, _core
from sharedbox._cli import main

from conftest import remove_segment, unique_name

SHM = Path("/dev/shm")


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of main(argv)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys, *argv):
    status, out, err = run_cli(capsys, *argv, "--json")
    assert status == 0, err
    assert err == ""
    return json.loads(out)


def assert_one_line_error(err, command):
    assert err.startswith(f"sharedbox {command}: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err


def listed(capsys, name):
    rows = [r for r in run_json(capsys, "list")["segments"] if r["name"] == name]
    assert len(rows) <= 1
    return rows[0] if rows else None


def dead_pid():
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def create_in_child(name, **items):
    """Creates segment `name` in a child process that then exits; returns its PID."""
    code = (
        "import os, sys\n"
        "from sharedbox import SharedDict\n"
        "d = SharedDict(sys.argv[1], size=1 << 20, max_keys=50)\n"
        f"d.update({items!r})\n"
        "d.close()\n"
        "print(os.getpid())\n"
    )
    child = subprocess.run([sys.executable, "-c", code, name],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


@pytest.fixture
def raw_file():
    """Writes files straight into /dev/shm (a POSIX shm object is such a file)."""
    made = []

    def make(data: bytes) -> str:
        name = unique_name("sbxclifile")
        (SHM / name).write_bytes(data)
        made.append(name)
        return name

    yield make
    for name in made:
        remove_segment(name)


_tripwire_hits = []


def _tripwire():
    _tripwire_hits.append(1)
    return "unpickled"


class Tripwire:
    """Unpickling it calls _tripwire(): proves whether dump ran pickle."""

    def __reduce__(self):
        return (_tripwire, ())


# ---------------------------------------------------------------------------
# list


def test_list_reports_a_segment(capsys, sd):
    sd.update({"a": 1, "b": "two", "c": b"x" * 5000})
    row = listed(capsys, sd.name)
    stats = sd.get_stats()
    assert row["status"] == "ok"
    assert row["version"] == _core.LAYOUT_VERSION
    assert row["size"] == sd.segment_size
    assert row["used"] == stats["bytes_used"]
    assert row["entries"] == len(sd) == 3
    assert row["max_keys"] == sd.max_keys
    assert row["creator_pid"] == os.getpid()
    assert row["alive"] is True
    assert row["mode"] == "0600"
    assert os.getpid() in row["mapped_by"]  # this process has it mapped

    status, out, err = run_cli(capsys, "list")
    assert status == 0 and err == ""
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["NAME", "SIZE", "USED"]
    line = next(ln for ln in lines if ln.split()[0] == sd.name)
    assert str(len(sd)) in line.split() and str(os.getpid()) in line.split()


def test_list_finds_segments_by_header_not_by_name(capsys, sd):
    foreign = shared_memory.SharedMemory(name=unique_name("sbxforeign"), create=True, size=16384)
    try:
        foreign.buf[:] = os.urandom(16384)
        names = {r["name"] for r in run_json(capsys, "list")["segments"]}
        assert sd.name in names
        assert foreign.name.lstrip("/") not in names
        for command in ("info", "dump"):
            status, out, err = run_cli(capsys, command, foreign.name.lstrip("/"))
            assert status == 1 and out == ""
            assert_one_line_error(err, command)
            assert "not a sharedbox segment" in err
    finally:
        foreign.close()
        foreign.unlink()


def test_list_marks_a_dead_creator(capsys, name):
    pid = create_in_child(name, k=1)
    row = listed(capsys, name)
    assert row["creator_pid"] == pid
    assert row["alive"] is False
    assert row["entries"] == 1
    assert row["mapped_by"] == []


def test_newer_layout_is_listed_as_incompatible(capsys, raw_file):
    header = struct.pack("<QI", _core.SEGMENT_MAGIC, _core.LAYOUT_VERSION + 1)
    name = raw_file(header.ljust(8192, b"\0"))
    row = listed(capsys, name)
    assert row["version"] == _core.LAYOUT_VERSION + 1
    assert row["status"].startswith("incompatible")
    assert row["entries"] is None and row["creator_pid"] is None
    status, _, err = run_cli(capsys, "info", name)
    assert status == 1
    assert_one_line_error(err, "info")
    assert f"layout version {_core.LAYOUT_VERSION + 1}" in err


def test_abandoned_segment_is_reported_not_attached(capsys, name):
    d = SharedDict(name, size=1 << 20)
    d.close()
    # Make it look like its creator died half-way: not ready, creator gone.
    # (h_ready and h_creator_pid are the 32-bit words at bytes 16 and 20.)
    path = SHM / name
    data = bytearray(path.read_bytes())
    ready = struct.unpack_from("<I", data, 16)[0]
    assert ready != 0 and struct.unpack_from("<I", data, 20)[0] == os.getpid()
    struct.pack_into("<II", data, 16, 0, dead_pid())
    path.write_bytes(bytes(data))

    row = listed(capsys, name)
    assert row["status"].startswith("abandoned") and row["alive"] is False
    assert row["entries"] is None
    status, _, err = run_cli(capsys, "dump", name)
    assert status == 1
    assert_one_line_error(err, "dump")
    assert "not ready" in err and "died" in err
    status, out, _ = run_cli(capsys, "rm", name)  # not in use: no --force needed
    assert status == 0 and not path.exists()


# ---------------------------------------------------------------------------
# info


def test_info_json_matches_the_library(capsys, sd):
    for i in range(40):
        sd[f"key{i}"] = "v" * i
    info = run_json(capsys, "info", sd.name)
    assert info["name"] == sd.name
    assert info["creator_pid"] == os.getpid() and info["creator_alive"] is True
    assert info["stats"]["total_entries"] == len(sd) == 40
    assert info["stats"]["bytes_used"] == sd.get_stats()["bytes_used"]
    expected = sd.recommend_sizing()
    assert info["sizing"]["sizing_recommendation"] == expected["sizing_recommendation"]
    assert info["sizing"]["target_entries"] == sd.max_keys

    info = run_json(capsys, "info", sd.name, "--target", "5000")
    assert info["sizing"]["target_entries"] == 5000
    assert (info["sizing"]["sizing_recommendation"]["total_segment_size"]
            == sd.recommend_sizing(5000)["sizing_recommendation"]["total_segment_size"])


def test_info_text(capsys, sd):
    sd["x"] = 1
    status, out, err = run_cli(capsys, "info", sd.name)
    assert status == 0 and err == ""
    assert repr(sd.name) in out
    assert f"1 of max_keys {sd.max_keys}" in out
    size = sd.recommend_sizing()["sizing_recommendation"]["total_segment_size"]
    assert f"size={size}" in out


def test_info_shows_pins_and_the_pids_that_hold_them(capsys, sd):
    sd["a"] = np.arange(100_000, dtype=np.float64)  # 800 kB of a 4 MiB segment
    sd["b"] = b"x" * 50_000
    mine = sd.view("a")
    part = mine[10:20]  # the same record: still one pin for this process
    code = (
        "import sys\n"
        "from sharedbox import SharedDict\n"
        "d = SharedDict(sys.argv[1], create=False)\n"
        "views = [d.view('a'), d.view('b')]\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"  # holds its views until killed
    )
    child = subprocess.Popen([sys.executable, "-c", code, sd.name], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n", child.stderr.read()
        sd["a"] = 0  # the viewed record is replaced, and stays allocated
        info = run_json(capsys, "info", sd.name)
        stats = info["stats"]
        assert stats["pins"] == 3 == sd.get_stats()["pins"]
        # JSON object keys are strings
        assert stats["pin_holders"] == {str(os.getpid()): 1, str(child.pid): 2}
        assert stats["pinned_bytes"] >= mine.nbytes

        status, out, err = run_cli(capsys, "info", sd.name)
        assert status == 0 and err == ""
        line = next(ln for ln in out.splitlines() if ln.split()[0] == "pins")
        assert line.split()[1] == "3,"
        assert f"pid {os.getpid()} (1 pin)" in line
        assert f"pid {child.pid} (2 pins)" in line
        assert "note: pins hold" in out  # 800 kB is more than a tenth of the heap
        used = next(ln for ln in out.splitlines() if ln.split()[0] == "used")
        assert "pinned" in used
    finally:
        child.kill()
        child.communicate()

    # info's get_stats() reclaims the pins of the killed child first.
    info = run_json(capsys, "info", sd.name)
    assert info["stats"]["pins"] == 1
    assert info["stats"]["pin_holders"] == {str(os.getpid()): 1}
    assert np.array_equal(part, np.arange(10, 20, dtype=np.float64))  # still whole

    del mine, part  # the last view: the replaced record is freed
    info = run_json(capsys, "info", sd.name)
    assert (info["stats"]["pins"], info["stats"]["pinned_bytes"]) == (0, 0)
    assert info["stats"]["pin_holders"] == {}
    status, out, err = run_cli(capsys, "info", sd.name)
    line = next(ln for ln in out.splitlines() if ln.split()[0] == "pins")
    limit = sd.get_stats()["max_pins_per_process"]
    assert line.split()[1:] == ["0,", "pinned", "0", "B;", "at", "most", str(limit), "per",
                                "process"]
    assert "note: pins hold" not in out


def test_info_bad_target_is_one_line(capsys, sd):
    status, _, err = run_cli(capsys, "info", sd.name, "--target", "0")
    assert status == 1
    assert_one_line_error(err, "info")


# ---------------------------------------------------------------------------
# dump


def test_dump_types_and_sizes(capsys, sd):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    values = {"none": None, "yes": True, "int": -7, "float": 2.5, "str": "héllo",
              "bytes": b"\x00" * 300, "big": 1 << 70, "obj": {"a": [1, 2]}, "arr": arr}
    sd.update(values)
    entries = {e["key"]: e for e in run_json(capsys, "dump", sd.name)["entries"]}
    assert set(entries) == set(values)
    types = {k: e["type"] for k, e in entries.items()}
    assert types == {"none": "None", "yes": "bool", "int": "int", "float": "float", "str": "str",
                     "bytes": "bytes", "big": "pickle", "obj": "dict", "arr": "ndarray"}
    # Stored size = one tag byte + the payload.
    assert entries["str"]["size"] == 1 + len("héllo".encode())
    assert entries["bytes"]["size"] == 301
    assert entries["int"]["size"] == entries["float"]["size"] == 9
    assert entries["big"]["size"] == 1 + len(pickle.dumps(values["big"], protocol=5))
    # A dict of plain values has a native encoding (no pickle): shown like a str.
    assert entries["obj"]["size"] == len(_core.encode_value(values["obj"]))
    assert entries["arr"]["dtype"] == "float32" and entries["arr"]["shape"] == [3, 4]
    assert entries["arr"]["size"] > arr.nbytes
    assert all("repr" not in e for e in entries.values())

    status, out, err = run_cli(capsys, "dump", sd.name)
    assert status == 0 and err == ""
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:]}
    assert lines["arr"][1:4] == ["ndarray", "float32", "(3,"]
    assert lines["str"][1:] == ["str", str(entries["str"]["size"])]


def test_dump_never_unpickles_unless_asked(capsys, sd):
    sd["trap"] = Tripwire()
    sd["plain"] = "text"
    _tripwire_hits.clear()
    entries = {e["key"]: e for e in run_json(capsys, "dump", sd.name, "--values")["entries"]}
    assert entries["trap"]["type"] == "pickle" and entries["trap"]["repr"] is None
    assert entries["plain"]["value"] == "text"
    status, out, _ = run_cli(capsys, "dump", sd.name, "--values")
    assert status == 0 and "not loaded" in out
    assert _tripwire_hits == []
    entries = {e["key"]: e for e in
               run_json(capsys, "dump", sd.name, "--values", "--unpickle")["entries"]}
    assert entries["trap"]["repr"] == repr("unpickled")
    assert _tripwire_hits == [1]


def test_dump_values_json_and_truncation(capsys, sd):
    sd.update({"n": 3, "f": float("nan"), "s": "x" * 1000, "b": b"abc",
               "a": np.zeros((50, 50)), "line\nbreak": 1})
    entries = {e["key"]: e for e in run_json(capsys, "dump", sd.name, "--values")["entries"]}
    assert entries["n"]["value"] == 3
    assert entries["s"]["value"] == "x" * 1000  # JSON output is never cut
    assert "value" not in entries["f"] and entries["f"]["repr"] == "nan"
    assert "value" not in entries["b"] and entries["b"]["repr"] == repr(b"abc")
    assert "value" not in entries["a"]
    assert entries["line\nbreak"]["value"] == 1

    status, out, _ = run_cli(capsys, "dump", sd.name, "--values", "--width", "20")
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 1 + len(sd)  # one line per key, newlines included
    s_line = next(ln for ln in lines if ln.startswith("s "))
    assert s_line.endswith("...") and "x" * 30 not in s_line
    assert repr("line\nbreak") in out


def test_dump_empty_and_missing(capsys, sd):
    status, out, _ = run_cli(capsys, "dump", sd.name)
    assert status == 0 and "empty" in out
    assert run_json(capsys, "dump", sd.name)["entries"] == []
    missing = unique_name()  # never created
    for command in ("dump", "info", "rm"):
        status, out, err = run_cli(capsys, command, missing)
        assert status == 1 and out == ""
        assert_one_line_error(err, command)
        assert "no segment named" in err


# ---------------------------------------------------------------------------
# rm


def test_rm_refuses_a_segment_in_use(capsys, sd):
    path = SHM / sd.name
    status, out, err = run_cli(capsys, "rm", sd.name)
    assert status == 1 and out == ""
    assert_one_line_error(err, "rm")
    assert "--force" in err and str(os.getpid()) in err
    assert path.exists()
    status, out, err = run_cli(capsys, "rm", "--force", sd.name)
    assert status == 0 and err == ""
    assert not path.exists()
    sd["still"] = "usable"  # this process's mapping stays valid
    assert sd["still"] == "usable"


def test_rm_removes_an_unused_segment(capsys, name):
    create_in_child(name, k=1)
    status, out, err = run_cli(capsys, "rm", name)
    assert status == 0 and err == "" and name in out
    assert not (SHM / name).exists()


def test_rm_foreign_file_needs_force(capsys, raw_file):
    name = raw_file(os.urandom(8192))
    status, _, err = run_cli(capsys, "rm", name)
    assert status == 1 and "not a sharedbox segment" in err
    assert (SHM / name).exists()
    assert run_cli(capsys, "rm", "-f", name)[0] == 0
    assert not (SHM / name).exists()


# ---------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("argv", [["info", "a/b"], ["dump", ".."], ["rm", "x/y"]])
def test_invalid_names(capsys, argv):
    status, out, err = run_cli(capsys, *argv)
    assert status == 1 and out == ""
    assert_one_line_error(err, argv[0])


def test_usage_errors_are_one_line(capsys):
    status, _, err = run_cli(capsys, "info")
    assert status == 2
    assert_one_line_error(err, "info")
    status, _, err = run_cli(capsys, "frobnicate")
    assert status == 2 and err.count("\n") == 1
    assert run_cli(capsys, "--version")[1].strip().startswith("sharedbox ")


def test_interrupt_is_one_line(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "cmd_list", interrupted)
    status, _, err = run_cli(capsys, "list")
    assert status == 130
    assert_one_line_error(err, "list")


def test_unexpected_error_is_one_line(capsys, monkeypatch):
    def broken(args):
        raise KeyError("bug")

    monkeypatch.setattr(_cli, "cmd_list", broken)
    status, _, err = run_cli(capsys, "list")
    assert status == 1
    assert_one_line_error(err, "list")
    assert "KeyError" in err


# ---------------------------------------------------------------------------
# The real entry points, in child processes.


def _script():
    found = Path(sys.executable).parent / "sharedbox"
    return str(found) if found.exists() else shutil.which("sharedbox")


def test_python_dash_m_and_script(sd):
    sd["k"] = [1, 2, 3]
    out = subprocess.run([sys.executable, "-m", "sharedbox", "list", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sd.name in {r["name"] for r in json.loads(out.stdout)["segments"]}

    script = _script()
    if script is None:
        pytest.skip("the sharedbox console script is not installed")
    out = subprocess.run([script, "dump", sd.name, "--json"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["entries"] == [{"key": "k", "type": "list",
                                                 "size": sd._value_info("k")[1]}]
    missing = unique_name()
    out = subprocess.run([script, "info", missing], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert_one_line_error(out.stderr, "info")


def test_closed_pipe_is_quiet(name):
    d = SharedDict(name, size=8 << 20, max_keys=5000)
    try:
        d.update({f"key-{i:05d}-" + "k" * 60: i for i in range(5000)})  # ~400 KB of output
        proc = subprocess.Popen([sys.executable, "-m", "sharedbox", "dump", name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = proc.stdout.readline()
        proc.stdout.close()  # like `| head -1`
        err = proc.stderr.read().decode()
        proc.wait(timeout=60)
        assert first.split() == [b"KEY", b"TYPE", b"SIZE"]
        assert err == ""
        assert proc.returncode == 141
    finally:
        d.close()


def test_demo(name):
    out = subprocess.run([sys.executable, "-m", "sharedbox", "demo", "--name", name],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"closed and unlinked {name!r}" in out.stdout
    assert not (SHM / name).exists()


def test_demo_refuses_an_existing_name_and_keeps_its_data(name):
    with SharedDict(name, {"keep": "me"}, size=1 << 20) as d:
        out = subprocess.run([sys.executable, "-m", "sharedbox", "demo", "--name", name],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 1
        assert_one_line_error(out.stderr, "demo")
        assert "exists already" in out.stderr
        assert (SHM / name).exists()
        assert dict(d.items()) == {"keep": "me"}


def _gone(pid):
    """Whether process pid has exited (a zombie counts: it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_demo_children_exit_when_the_demo_process_dies(name):
    # The demo process starts its children and dies before it lets them
    # begin: they must notice and exit instead of waiting forever.
    code = (
        "import multiprocessing as mp, os, sys\n"
        "from sharedbox import SharedDict, _demo\n"
        "d = SharedDict(sys.argv[1], size=16 << 20, max_keys=1000)\n"
        "procs, start, out = _demo.start_children(mp.get_context('spawn'), sys.argv[1])\n"
        "print(' '.join(str(p.pid) for p in procs), flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1 + _demo_workers()
    import time

    deadline = time.monotonic() + 60  # a generous bound, not a speed check
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if not _gone(pid)]
    for pid in left:  # do not leave them behind when the test fails
        os.kill(pid, 9)
    assert left == []


def _demo_workers():
    from sharedbox import _demo

    return _demo.WORKERS


def test_demo_help_describes_the_demo(capsys):
    status, out, _ = run_cli(capsys, "demo", "--help")
    assert status == 0
    text = " ".join(out.split())
    assert "producer" in text and "consumer" in text and "exists" in text


def test_dump_shows_an_empty_key_visibly(capsys, sd):
    sd.update({"": "empty key", " padded ": 2, "plain": 3})
    status, out, _ = run_cli(capsys, "dump", sd.name)
    assert status == 0
    first_cells = [line.split("  ")[0] for line in out.splitlines()[1:]]
    assert sorted(first_cells) == sorted(["''", repr(" padded "), "plain"])


def test_unpickle_without_values_says_what_it_needs(capsys, sd):
    status, out, err = run_cli(capsys, "dump", sd.name, "--unpickle")
    assert status == 2 and out == ""
    assert_one_line_error(err, "dump")
    assert "--values" in err


def test_info_dump_and_rm_accept_a_dev_shm_path(capsys, name):
    with SharedDict(name, {"k": 1}, size=1 << 20):
        path = str(SHM / name)
        assert run_json(capsys, "info", path)["name"] == name
        assert run_json(capsys, "dump", path)["entries"][0]["key"] == "k"
    status, out, err = run_cli(capsys, "rm", path)
    assert status == 0, err
    assert not (SHM / name).exists()


def test_rm_removes_a_closed_segment_whose_creator_is_running(capsys, name):
    SharedDict(name, size=1 << 20).close()  # its creator (this process) runs on
    status, out, err = run_cli(capsys, "rm", name)
    assert status == 0 and err == ""
    assert not (SHM / name).exists()


def test_list_segments_is_what_list_shows(capsys, sd):
    sd["a"] = 1
    mine = [s for s in sharedbox.list_segments() if s["name"] == sd.name]
    assert len(mine) == 1
    info = mine[0]
    assert info["entries"] == 1 and info["max_keys"] == sd.max_keys
    assert info["size"] == sd.segment_size and info["status"] == "ok"
    assert info["creator_pid"] == os.getpid() and info["alive"] is True
    assert info["mode"] == 0o600 and os.getpid() in info["mapped_by"]
    header = _core._peek_header((SHM / sd.name).read_bytes()[:_core.PAGE_BYTES])
    assert info["created"] == header["created_unix_ns"] / 1e9
    row = listed(capsys, sd.name)
    assert set(row) == set(info)
    assert row["mode"] == "0600"
    assert {k: v for k, v in row.items() if k not in ("mode", "created")} == {
        k: v for k, v in info.items() if k not in ("mode", "created")
    }
