"""Segments that are full, half-made, foreign or rewritten under us: every
case gets a clear error or a correct result, never SIGBUS, SIGSEGV or a wait.

* A full /dev/shm (issue: "No SIGBUS, ever"): segments are sparse, so two that
  each passed the free-space check at creation can together overfill the
  tmpfs.  The allocator reserves pages (posix_fallocate) before handing them
  out, so the write that finds no memory raises SegmentFullError, and reads,
  stats and the CLI keep working.  Tested in a private mount namespace with a
  small tmpfs over /dev/shm.
* Objects that were never initialised are refused at once, with a message
  that says how to remove them; a creator's abandoned temporary object is
  removed by the next creation.
* (Attaching copies the header once, so a process rewriting the header while
  others attach cannot make them map one geometry and use another: the engine
  test attach_header_race, in tests/engine/test_engine.cpp.)
* Allocations sized by segment contents are bounded by the heap.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import remove_segment, unique_name
from sharedbox import (
    CorruptSegmentError,
    IncompatibleSegmentError,
    SegmentNotReadyError,
    SharedDict,
)

SHM = Path("/dev/shm")


# ---------------------------------------------------------------------------
# A full /dev/shm.

FULL_SHM_CHILD = textwrap.dedent(
    r'''
    import json, os, subprocess, sys
    from sharedbox import SharedDict, SegmentFullError
    report = {}
    # Each segment passes the creation check (6 MiB free of 8 MiB) on its own.
    a = SharedDict("fill_a", size=6 << 20, max_keys=1000)
    b = SharedDict("fill_b", size=6 << 20, max_keys=1000)
    blob = os.urandom(200 << 10)
    stored = {"fill_a": 0, "fill_b": 0}
    for d in (a, b):
        try:
            while True:
                d[f"k{stored[d.name]}"] = blob
                stored[d.name] += 1
        except SegmentFullError as e:
            report[d.name] = str(e)
    # Smaller values still fit where reserved chunks have room; the dict
    # stays whole and readable either way.
    try:
        b["small"] = "x" * 100
        report["small"] = "stored"
    except SegmentFullError as e:
        report["small"] = str(e)
    report["stored"] = stored
    report["a_ok"] = all(a[f"k{i}"] == blob for i in range(stored["fill_a"]))
    report["b_ok"] = all(b[f"k{i}"] == blob for i in range(stored["fill_b"]))
    report["b_len"] = len(b)
    report["a_integrity"] = a._check_integrity()
    report["b_integrity"] = b._check_integrity()
    report["b_stats_entries"] = b.get_stats()["entries"] if isinstance(b.get_stats(), dict) else None
    for cmd in (["info", "fill_b"], ["list"], ["dump", "fill_b"]):
        p = subprocess.run([sys.executable, "-m", "sharedbox", *cmd], capture_output=True, text=True)
        report["cli_" + cmd[0]] = p.returncode
    del b["k0"]
    b["after_delete"] = blob  # room again
    report["after_delete"] = b["after_delete"] == blob
    print(json.dumps(report))
    '''
)


def _in_small_shm(script, size="8m"):
    """Runs `script` with a fresh tmpfs of `size` over /dev/shm, in a private
    mount namespace (so nothing outside sees it)."""
    # As root (CI runs as root) this must work: a failure fails the test.  A
    # non-root user tries a user namespace, which some kernels forbid: only
    # then is the test skipped, with the reason.
    root = os.geteuid() == 0
    give_up = pytest.fail if root else pytest.skip
    unshare = shutil.which("unshare")
    if unshare is None:
        give_up("util-linux's unshare is not installed")
    ns = [unshare, "-m", "--propagation", "private"]
    if not root:
        ns.insert(1, "-r")  # a user namespace lets a non-root user mount a tmpfs
    inner = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec \"$0\" -c \"$1\""
    probe = subprocess.run([*ns, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        give_up(f"cannot mount a private tmpfs here: {probe.stderr.strip()}")
    return subprocess.run([*ns, "sh", "-c", inner, sys.executable, script], capture_output=True,
                          text=True, timeout=300)


def test_full_dev_shm_raises_instead_of_sigbus():
    import json

    proc = _in_small_shm(FULL_SHM_CHILD)
    assert proc.returncode == 0, f"status {proc.returncode} (-7 is SIGBUS):\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # The first segment fills itself; the second finds /dev/shm full first.
    assert "/dev/shm" in report["fill_b"] and "--shm-size" in report["fill_b"]
    assert report["stored"]["fill_b"] < report["stored"]["fill_a"]
    assert report["a_ok"] and report["b_ok"]
    assert report["b_len"] == report["stored"]["fill_b"] + (report["small"] == "stored")
    assert report["a_integrity"] == [] and report["b_integrity"] == []
    assert report["cli_info"] == report["cli_list"] == report["cli_dump"] == 0
    assert report["after_delete"] is True


# ---------------------------------------------------------------------------
# Objects that were never initialised, and foreign ones.

@pytest.mark.parametrize("contents", [b"", b"\0" * (1 << 20)], ids=["empty", "zero-filled"])
@pytest.mark.parametrize("create", [False, True])
def test_never_initialised_object_is_refused_at_once(name, contents, create):
    (SHM / name).write_bytes(contents)
    start = time.monotonic()
    with pytest.raises(SegmentNotReadyError, match=f"sharedbox rm {name}") as info:
        SharedDict(name, create=create, attach_timeout=30)
    assert time.monotonic() - start < 5  # refused, not waited out (attach_timeout=30)
    assert "never initialised" in str(info.value)
    assert (SHM / name).read_bytes() == contents  # not ours: left as it was


def test_too_small_object_is_refused(name):
    (SHM / name).write_bytes(b"x" * 100)
    with pytest.raises(IncompatibleSegmentError, match="too small"):
        SharedDict(name, create=False)


def test_creation_removes_an_abandoned_temporary(name):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    leftover = SHM / f".sbx-init-{dead}-0123456789abcdef"
    live = SHM / f".sbx-init-{os.getpid()}-0123456789abcdef"
    leftover.write_bytes(b"\0" * 4096)
    live.write_bytes(b"\0" * 4096)
    try:
        d = SharedDict(name, size=1 << 20)
        d.close()
        assert not leftover.exists()
        assert live.exists()  # its creator (this process) is alive
    finally:
        leftover.unlink(missing_ok=True)
        live.unlink(missing_ok=True)


def test_a_name_never_shows_a_half_built_segment(name):
    """Creators build under a temporary name and link it whole: an attacher
    racing many creators either finds no segment or a complete one."""
    script = textwrap.dedent(
        f'''
        import sys
        from sharedbox import SharedDict, SegmentNotFoundError
        seen = 0
        for _ in range(400):
            try:
                d = SharedDict({name!r}, create=False)
            except SegmentNotFoundError:
                continue
            seen += 1
            d.close()
        print(seen)
        '''
    )
    attacher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(40):
        d = SharedDict(name, size=1 << 20)
        d.close()
        d.unlink()
    out, _ = attacher.communicate(timeout=120)
    assert attacher.returncode == 0, out


# ---------------------------------------------------------------------------
# Allocations derived from segment contents are bounded.

CORRUPT_INDEX_CHILD = textwrap.dedent(
    r'''
    import mmap, os, resource, struct, sys
    from sharedbox import SharedDict, CorruptSegmentError
    name = sys.argv[1]
    if "asan" not in os.environ.get("LD_PRELOAD", ""):  # ASan reserves terabytes
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    d = SharedDict(name, size=4 << 20, max_keys=1000, stripes=1)
    for i in range(600):
        d[f"key{i}"] = i
    with open(f"/dev/shm/{name}", "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        # Stripe 0's table reference is the second word of its reader line.
        ref = struct.unpack_from("<Q", m, 4096 + 64 + 8)[0]
        table, log2 = ref & ~63, ref & 63
        words = [struct.unpack_from("<Q", m, table + 8 * i)[0] for i in range(1 << log2)]
        first_full = next(w for w in words if w & 3 == 2)
        record = (first_full >> 24) * 64
        vlen = struct.unpack_from("<Q", m, record + 16)[0]  # r_vlen
        # The key length (r_klen_flags, bits 0-23): the whole rest of the
        # segment, so the record passes the bounds check; then every slot
        # names that record.
        struct.pack_into("<I", m, record + 28, len(m) - record - 32 - vlen)
        for i in range(1 << log2):
            struct.pack_into("<Q", m, table + 8 * i, first_full)
        m.close()
    for call in (d.keys_atomic, lambda: list(d)):
        try:
            call()
        except CorruptSegmentError as e:
            print("refused:", e)
    d.close()
    '''
)


def test_corrupt_index_cannot_make_keys_exhaust_memory(name):
    """Every slot of a table names one record that claims a key as long as the
    rest of the segment: a walk that trusted it would copy 1,024 x 4 MiB.  Run
    in a child whose address space is capped at 1 GiB."""
    proc = subprocess.run([sys.executable, "-c", CORRUPT_INDEX_CHILD, name], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("refused:") == 2, proc.stdout + proc.stderr[-3000:]
