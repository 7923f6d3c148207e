"""Finding the sharedbox segments in /dev/shm without attaching to them.

``list_segments()`` is what ``sharedbox list`` shows, as data.  Segments are
recognised by their header (read with read(2), never mapped), not by name.
"""

from __future__ import annotations

import os
import stat
from typing import Optional, TypedDict

from . import _core
from ._dict import SharedDict
from .errors import SharedBoxError

__all__ = ["SegmentInfo", "list_segments", "SHM_DIR"]

SHM_DIR = "/dev/shm"
# The header is one page; reading it is enough to recognise a segment.
_HEADER_BYTES = _core.PAGE_BYTES
# Attaching (to count entries) waits at most this long for a creator that is
# still initialising, so that a half-built segment never makes a listing hang.
ATTACH_TIMEOUT = 0.5


class SegmentInfo(TypedDict):
    """One segment, as list_segments() describes it.

    Fields that cannot be known (another layout version, a segment that is
    not ready) are None.
    """

    name: str
    """The name to pass to SharedDict (the file is /dev/shm/NAME)."""
    version: int
    """Its layout version."""
    status: str
    """'ok', 'not ready', 'abandoned (never finished)', 'incompatible (layout
    version N)', 'no access', or 'error: ...'."""
    size: int
    """The segment's size in bytes."""
    used: Optional[int]
    """Heap bytes in use (records and index)."""
    entries: Optional[int]
    """Keys stored (counted by attaching, which takes no lock)."""
    max_keys: Optional[int]
    creator_pid: Optional[int]
    """The PID of the creating process, in its PID namespace."""
    alive: Optional[bool]
    """Whether a process with creator_pid exists here (None: unknown)."""
    mode: Optional[int]
    """Permission bits given at creation."""
    created: Optional[float]
    """Creation time, in seconds since the epoch."""
    mapped_by: list[int]
    """PIDs of the processes that map it, among those this user may inspect."""


def read_header(path: str) -> tuple[Optional[dict], os.stat_result]:
    """(header fields or None if not a sharedbox segment, stat) of a file.

    Reads with read(2) instead of mapping it: a foreign file is never mapped
    or written, and O_NONBLOCK keeps a FIFO someone left there from blocking.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, st
        data = os.read(fd, _HEADER_BYTES)
    finally:
        os.close(fd)
    return _core._peek_header(data), st


def pid_alive(pid: int) -> Optional[bool]:
    """Whether a process with this PID exists here; None if the PID is unknown."""
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return None
    return True


def mapping_pids(files: list[os.stat_result]) -> dict[tuple[int, int], list[int]]:
    """For each (st_dev, st_ino) in files, the PIDs of processes that map it.

    Reads /proc/*/maps: a process is seen only if this user may read its maps
    (its own processes, or all as root) and it lives in this PID namespace.
    The engine closes its descriptor after mapping, so maps is where a live
    handle shows.
    """
    wanted = {(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino): (st.st_dev, st.st_ino)
              for st in files}
    found: dict[tuple[int, int], list[int]] = {key: [] for key in wanted.values()}
    if not wanted:
        return found
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps", "rb") as maps:
                lines = maps.read().splitlines()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        seen = set()
        for line in lines:
            # address perms offset dev inode path
            parts = line.split(None, 5)
            if len(parts) < 6 or parts[4] == b"0":
                continue
            major, _, minor = parts[3].partition(b":")
            try:
                key = wanted.get((int(major, 16), int(minor, 16), int(parts[4])))
            except ValueError:
                continue
            if key is not None and key not in seen:
                seen.add(key)
                found[key].append(int(entry))
    for pids in found.values():
        pids.sort()
    return found


def scan() -> tuple[list[SegmentInfo], list[str]]:
    """Every sharedbox segment in SHM_DIR, and the names of files that could
    not be read.  OSError if SHM_DIR cannot be listed."""
    names = sorted(os.listdir(SHM_DIR))
    segments = []
    unreadable: list[str] = []
    for name in names:
        try:
            header, st = read_header(os.path.join(SHM_DIR, name))
        except PermissionError:
            unreadable.append(name)
            continue
        except OSError:  # removed meanwhile, a symlink, ...
            continue
        if header is not None:
            segments.append((name, header, st))
    mappers = mapping_pids([st for _, _, st in segments])
    rows = [_describe(name, header, st, mappers[(st.st_dev, st.st_ino)])
            for name, header, st in segments]
    return rows, unreadable


def list_segments() -> list[SegmentInfo]:
    """The sharedbox segments in /dev/shm, sorted by name: what ``sharedbox
    list`` shows (size, bytes used, entries, creator and whether it runs,
    which processes map it).

    Takes no locks; a ready segment of this layout version is attached
    briefly (read-only use) to count its entries.  Files this user cannot
    read are left out.  Raises OSError if /dev/shm cannot be listed.
    """
    return scan()[0]


def _describe(name: str, header: dict, st: os.stat_result, mapped_by: list[int]) -> SegmentInfo:
    """One segment.  Only a ready segment of our layout version is attached
    (to count its entries, which takes no lock)."""
    row = SegmentInfo(
        name=name,
        version=header["version"],
        status="ok",
        size=st.st_size,
        used=None,
        entries=None,
        max_keys=None,
        creator_pid=None,
        alive=None,
        mode=None,
        created=None,
        mapped_by=mapped_by,
    )
    if "ready" not in header:
        row["status"] = f"incompatible (layout version {header['version']})"
        return row
    pid = header["creator_pid"]
    row["max_keys"] = header["max_keys"]
    row["creator_pid"] = pid
    row["alive"] = pid_alive(pid)
    row["mode"] = header["mode"]
    row["created"] = header["created_unix_ns"] / 1e9
    if not header["ready"]:
        row["status"] = "not ready" if row["alive"] is not False else "abandoned (never finished)"
        return row
    row["used"] = header["used_bytes"]
    try:
        with SharedDict(name, create=False, attach_timeout=ATTACH_TIMEOUT,
                        allow_pickle=False) as d:
            row["entries"] = len(d)
    except PermissionError:
        row["status"] = "no access"
    except (SharedBoxError, OSError, ValueError) as exc:
        row["status"] = f"error: {_message(exc)}"
    return row


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:  # without the "[Errno N]" prefix
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__
