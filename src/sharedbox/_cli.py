"""The ``sharedbox`` command line: list, info, dump, rm, copy (in _copy.py) and demo.

Each command is one function taking the parsed arguments and returning an exit
status.  Failures are reported by ``main`` as one line,
``sharedbox <command>: <message>`` on stderr, never as a traceback.

Exit status: 0 success, 1 failure (or ``rm`` refused), 2 bad usage,
130 interrupted (Ctrl-C), 141 output pipe closed (e.g. ``| head``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from typing import Any, Mapping, Optional

from . import __version__, _core
from ._dict import SharedDict
from ._segments import ATTACH_TIMEOUT, SHM_DIR, mapping_pids, pid_alive, read_header, scan
from .errors import PickleRefusedError, SharedBoxError
from ._copy import CopyError as _CopyError
from ._copy import add_parser as add_copy_parser

_PID_NOTE = (
    "PIDs are those of the creator's PID namespace: across containers that share "
    "/dev/shm, 'alive' can be wrong, and a reused PID looks alive."
)


class CliError(Exception):
    """A failure whose message is complete as it is (no exception type needed)."""


class _UsageError(CliError):
    """Options that do not go together (exit status 2, like argparse's errors)."""


# ---------------------------------------------------------------------------
# Finding and describing segments without attaching to them (see _segments).


def _segment_path(name: str) -> str:
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise CliError(
            f"{name!r} is not a segment name (a name in {SHM_DIR}, or {SHM_DIR}/NAME)"
        )
    return os.path.join(SHM_DIR, name)


def _name_arg(text: str) -> str:
    """The segment name in a NAME argument, which may also be given as
    /dev/shm/NAME (as `ls` shows it)."""
    prefix = SHM_DIR + "/"
    name = text[len(prefix):] if text.startswith(prefix) else text
    _segment_path(name)  # refuses what is not a name
    return name


def _header_or_fail(name: str) -> tuple[dict, os.stat_result]:
    """The header of segment `name`, or a CliError saying why there is none usable."""
    path = _segment_path(name)
    try:
        header, st = read_header(path)
    except FileNotFoundError:
        raise CliError(f"no segment named {name!r} in {SHM_DIR}") from None
    except PermissionError:
        raise CliError(f"segment {name!r}: permission denied") from None
    if header is None:
        raise CliError(f"{name!r} is not a sharedbox segment")
    if "ready" not in header:
        raise CliError(
            f"segment {name!r} has layout version {header['version']}; this sharedbox "
            f"({__version__}) reads version {_core.LAYOUT_VERSION}"
        )
    if not header["ready"]:
        raise CliError(f"segment {name!r} is not ready: {_not_ready_reason(header)}")
    return header, st


def _not_ready_reason(header: dict) -> str:
    pid = header["creator_pid"]
    if pid_alive(pid) is False:
        return f"its creator (pid {pid}) died while initialising it; remove it with 'sharedbox rm'"
    return f"its creator (pid {pid}) is still initialising it"


def _scan() -> tuple[list[dict], list[str]]:
    """list_segments()'s rows as `list` prints them (mode in octal, creation
    time in ISO format), and the names of files that could not be read."""
    try:
        segments, unreadable = scan()
    except OSError as exc:
        raise CliError(f"{SHM_DIR}: {exc.strerror}") from None
    rows = []
    for seg in segments:
        row: dict[str, Any] = dict(seg)
        row["mode"] = None if seg["mode"] is None else f"{seg['mode']:04o}"
        row["created"] = None if seg["created"] is None else _iso_time(seg["created"])
        rows.append(row)
    return rows, unreadable


def _iso_time(unix_seconds: float) -> Optional[str]:
    try:
        t = datetime.datetime.fromtimestamp(unix_seconds)
    except (OverflowError, OSError, ValueError):
        return None
    return t.isoformat(sep=" ", timespec="seconds")


# ---------------------------------------------------------------------------
# Output helpers.


def _human(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _yes_no(flag: Optional[bool]) -> str:
    return "?" if flag is None else ("yes" if flag else "no")


def _show_key(key: str) -> str:
    # One visible cell per key: a key that is empty, has control characters
    # (newlines, ...) or leading/trailing spaces is shown as its repr.
    if key and key.isprintable() and key.strip() == key:
        return key
    return repr(key)


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    for line in [header] + rows:
        cells = [cell.ljust(w) for cell, w in zip(line, widths)]
        print("  ".join(cells).rstrip())


def _print_json(obj: Any) -> None:
    # allow_nan=False: the output is strict JSON (callers pass finite floats).
    print(json.dumps(obj, indent=2, allow_nan=False))


def _short_repr(value: Any, width: int) -> str:
    """repr(value) on one line, at most `width` characters (0: no limit)."""
    if width and isinstance(value, (str, bytes)) and len(value) > width:
        # Slice first: a 100 MB string is not repr'd whole to show 80 characters.
        text = repr(value[:width])
    else:
        text = repr(value)
    text = re.sub(r"\s*\n\s*", " ", text)  # NumPy reprs span lines
    if width and len(text) > width:
        text = text[: max(width - 3, 1)] + "..."
    return text


def _attach(name: str, allow_pickle: bool = False) -> SharedDict:
    return SharedDict(name, create=False, attach_timeout=ATTACH_TIMEOUT, allow_pickle=allow_pickle)


# ---------------------------------------------------------------------------
# Commands.


def cmd_list(args: argparse.Namespace) -> int:
    rows, unreadable = _scan()
    if args.json:
        _print_json({"directory": SHM_DIR, "segments": rows, "unreadable": unreadable})
        return 0
    if not rows:
        print(f"no sharedbox segments in {SHM_DIR}")
    else:
        _table(
            ["NAME", "SIZE", "USED", "ENTRIES", "MAX_KEYS", "CREATOR", "ALIVE", "MAPPED",
             "MODE", "STATUS"],
            [
                [
                    _show_key(r["name"]),
                    _human(r["size"]),
                    _human(r["used"]),
                    "-" if r["entries"] is None else str(r["entries"]),
                    "-" if r["max_keys"] is None else str(r["max_keys"]),
                    "-" if r["creator_pid"] is None else str(r["creator_pid"]),
                    "-" if r["creator_pid"] is None else _yes_no(r["alive"]),
                    str(len(r["mapped_by"])),
                    r["mode"] or "-",
                    r["status"],
                ]
                for r in rows
            ],
        )
    if unreadable:
        print(f"({len(unreadable)} file(s) in {SHM_DIR} could not be read and are not shown)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    header, st = _header_or_fail(args.name)
    with _attach(args.name) as d:
        advice = d.recommend_sizing(args.target)
    stats = advice["current_stats"]
    pid = header["creator_pid"]
    info = {
        "name": args.name,
        "path": _segment_path(args.name),
        "layout_version": header["version"],
        "creator_pid": pid,
        "creator_alive": pid_alive(pid),
        "created": _iso_time(header["created_unix_ns"] / 1e9),
        "mode": f"{header['mode']:04o}",
        "mapped_by": mapping_pids([st])[(st.st_dev, st.st_ino)],
        "stats": stats,
        "sizing": {k: v for k, v in advice.items() if k != "current_stats"},
    }
    if args.json:
        _print_json(info)
        return 0
    size, used, free = stats["segment_size"], stats["bytes_used"], stats["bytes_free"]
    entries, max_keys = stats["total_entries"], stats["max_keys"]
    heap = used + free
    alive = {True: "running", False: "not running", None: "unknown"}[info["creator_alive"]]
    mapped = ", ".join(map(str, info["mapped_by"])) or "none that this user can see"
    rec = advice["sizing_recommendation"]
    stripes = advice["lock_recommendation"]["stripes"]
    lines = [
        ("segment", f"{args.name!r} ({info['path']}), layout version {info['layout_version']}"),
        ("size", f"{_human(size)} ({size} bytes); heap {_human(heap)}"),
        ("used", f"{_human(used)} ({_percent(used, heap)} of the heap): records "
                 f"{_human(stats['record_bytes'])}, index {_human(stats['index_bytes'])}"
                 + (f", pinned {_human(stats['pinned_bytes'])}" if stats["pinned_bytes"] else "")),
        ("free", f"{_human(free)}; largest free block {_human(stats['largest_free_block'])}"),
        ("entries", f"{entries} of max_keys {max_keys} ({_percent(entries, max_keys)})"),
        ("averages", f"key {stats['avg_key_utf8_bytes']:.1f} B, "
                     f"value {_human(stats['avg_value_pickle_bytes'])}"),
        ("stripes", str(stats["stripes"])),
        ("creator", f"pid {pid} ({alive}), created {info['created'] or '?'}"),
        ("mode", info["mode"]),
        ("mapped by", mapped),
        ("recoveries", f"{stats['recoveries']} (repairs after a process died holding a lock)"),
        ("pins", _pins_text(stats)),
    ]
    for label, text in lines:
        print(f"{label:<11} {text}")
    print()
    print(f"sizing advice for {advice['target_entries']} entries like the current ones:")
    print(f"  SharedDict(name, size={rec['total_segment_size']}, max_keys={rec['max_keys']}, "
          f"stripes={stripes})")
    print(f"  ({_human(rec['total_segment_size'])}, about {rec['bytes_per_entry']} bytes per "
          f"entry; now {_human(size)}, max_keys {max_keys}, stripes {stats['stripes']})")
    for warning in _warnings(stats):
        print(f"  note: {warning}")
    return 0


def _pins_text(stats: Mapping[str, Any]) -> str:
    """The 'pins' line: records held by views (view(), create_array(),
    create_bytes()), the bytes they keep from reuse, and which processes hold
    them.  get_stats() has just reclaimed the pins of dead processes."""
    pins, holders = stats["pins"], stats["pin_holders"]
    text = f"{pins}, pinned {_human(stats['pinned_bytes'])}"
    if holders:
        text += "; held by " + ", ".join(
            f"pid {pid} ({n} pin{'' if n == 1 else 's'})" for pid, n in sorted(holders.items())
        )
    return text + f"; at most {stats['max_pins_per_process']} per process"


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _warnings(stats: Mapping[str, Any]) -> list[str]:
    out = []
    if stats["max_keys"] and stats["total_entries"] >= 0.9 * stats["max_keys"]:
        out.append("entries are near max_keys: new keys will soon raise TooManyKeysError")
    heap = stats["bytes_used"] + stats["bytes_free"]
    if heap and stats["bytes_free"] < 0.1 * heap:
        out.append("less than 10% of the heap is free: writes may raise SegmentFullError")
    if heap and stats["pinned_bytes"] >= 0.1 * heap:
        out.append(f"pins hold {_human(stats['pinned_bytes'])} (records replaced or "
                   "deleted while viewed, and arrays being built): it is freed when the "
                   "processes listed under 'pins' release their views")
    return out


def cmd_dump(args: argparse.Namespace) -> int:
    if args.unpickle and not args.values:
        raise _UsageError("--unpickle needs --values: it loads pickled values to show them")
    _header_or_fail(args.name)
    entries, failed = [], 0
    # Without --unpickle the handle refuses pickle, so nothing from the
    # segment can run code here.
    with _attach(args.name, allow_pickle=args.unpickle) as d:
        for key in sorted(d._keys(False)):
            try:
                info = d._value_info(key)
            except (SharedBoxError, ValueError) as exc:
                entries.append({"key": key, "type": "unreadable", "size": None, "error": str(exc)})
                failed += 1
                continue
            if info is None:  # deleted since the keys were listed
                continue
            kind, size, descr, shape = info
            entry: dict[str, Any] = {"key": key, "type": kind, "size": size}
            if kind == "ndarray" and descr is not None and shape is not None:
                entry["dtype"] = _dtype_name(descr)
                entry["shape"] = list(shape)
            if args.values:
                _add_value(d, entry, args)
            entries.append(entry)
    if args.json:
        _print_json({"name": args.name, "entries": entries})
    else:
        _print_dump(entries, args)
    if failed:
        print(f"sharedbox dump: {failed} value(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _dtype_name(descr: bytes) -> str:
    try:
        from ._codec import _descr_to_dtype

        return str(_descr_to_dtype(descr))
    except Exception:  # no NumPy here, or a damaged descr: show it as stored
        return descr.decode("utf-8", "backslashreplace")


def _add_value(d: SharedDict, entry: dict, args: argparse.Namespace) -> None:
    """Adds 'repr' (and 'value', when JSON can hold it exactly) to entry."""
    if entry["type"] == "pickle" and not args.unpickle:
        entry["repr"] = None
        return
    try:
        value = d.get(entry["key"])
    except PickleRefusedError:  # overwritten by a pickled value meanwhile
        entry["repr"] = None
        return
    except (SharedBoxError, ValueError) as exc:
        entry["repr"] = None
        entry["error"] = str(exc)
        return
    if args.json:
        entry["repr"] = _short_repr(value, 0)
        exact = value is None or type(value) in (bool, int, str) or (
            type(value) is float and value == value and abs(value) != float("inf"))
        if exact:
            entry["value"] = value
    else:
        entry["repr"] = _short_repr(value, args.width)


def _print_dump(entries: list[dict], args: argparse.Namespace) -> None:
    header = ["KEY", "TYPE", "SIZE"] + (["VALUE"] if args.values else [])
    rows = []
    for e in entries:
        kind = e["type"]
        if kind == "ndarray":
            kind = f"ndarray {e['dtype']} {tuple(e['shape'])}"
        row = [_show_key(e["key"]), kind, "-" if e["size"] is None else str(e["size"])]
        if args.values:
            if "error" in e:
                row.append(f"(unreadable: {e['error']})")
            elif e.get("repr") is None:
                row.append("(pickled; not loaded without --unpickle)")
            else:
                row.append(e["repr"])
        elif "error" in e:
            row.append(f"({e['error']})")
        rows.append(row)
    if not rows:
        print(f"segment {args.name!r} is empty")
        return
    _table(header, rows)


def cmd_rm(args: argparse.Namespace) -> int:
    path = _segment_path(args.name)
    try:
        header, st = read_header(path)
    except FileNotFoundError:
        raise CliError(f"no segment named {args.name!r} in {SHM_DIR}") from None
    except PermissionError:
        header, st = None, None  # unlinking needs the directory, not the file
    reasons = []
    if st is None:
        reasons.append("it cannot be read, so whether it is in use is unknown")
    elif header is None:
        reasons.append("it is not a sharedbox segment")
    else:
        # In use means mapped: a handle maps the segment for as long as it
        # is open.  A running creator that has closed its handle does not
        # count (nor does a reused PID).
        mapped = mapping_pids([st])[(st.st_dev, st.st_ino)]
        if mapped:
            reasons.append("it is mapped by pid " + ", ".join(map(str, mapped)))
    if reasons and not args.force:
        raise CliError(
            f"not removing {args.name!r}: " + "; ".join(reasons) + " (pass --force to remove it)"
        )
    try:
        # /dev/shm/NAME is the object's file: os.unlink also removes a name
        # that is not valid UTF-8 (which the native unlink_segment refuses).
        os.unlink(path)
    except FileNotFoundError:
        raise CliError(f"no segment named {args.name!r} in {SHM_DIR}") from None
    print(f"removed {args.name!r}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run

    return run(args.name)


# ---------------------------------------------------------------------------
# Parser and entry point.


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:  # without the "[Errno N]" prefix
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _width(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sharedbox",
        description="A dict in POSIX shared memory, shared by many processes. "
        "These commands inspect and remove the segments in /dev/shm.",
    )
    parser.add_argument("--version", action="version", version=f"sharedbox {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "list",
        help="list the sharedbox segments in /dev/shm",
        description="List the sharedbox segments in /dev/shm, recognised by their header "
        "(not by name): size, bytes used, entries, max_keys, creator PID and whether it "
        "is running, how many processes map it, permissions.  Takes no locks.  "
        "MAPPED counts the processes whose /proc/PID/maps this user can read.  " + _PID_NOTE,
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "info",
        help="statistics and sizing advice for one segment",
        description="Statistics of one segment and the size, max_keys and stripes "
        "recommended for it.  'pins' counts the records held by views (view(), "
        "create_array(), create_bytes()), the bytes they keep from reuse, and the PIDs "
        "of the processes that hold them; pins of processes that have died are "
        "reclaimed first.  " + _PID_NOTE,
    )
    p.add_argument("name", help="segment name (as given to SharedDict), or /dev/shm/NAME")
    p.add_argument("--target", type=int, metavar="N",
                   help="size the advice for N entries (default: max_keys)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "dump",
        help="list keys with value type and size",
        description="One line per key: the key, the value's type (None, bool, int, float, "
        "str, bytes, pickle, or ndarray with dtype and shape) and its stored size in bytes.  "
        "Pickled values are never unpickled unless --unpickle is given: unpickling runs "
        "code chosen by whoever wrote the segment.",
    )
    p.add_argument("name", help="segment name, or /dev/shm/NAME")
    p.add_argument("--values", action="store_true", help="also print each value's repr")
    p.add_argument("--unpickle", action="store_true",
                   help="with --values, load pickled values too (only for trusted segments)")
    p.add_argument("--width", type=_width, default=80, metavar="N",
                   help="cut value reprs to N characters (default 80; 0: no limit; "
                   "--json is never cut)")
    p.add_argument("--json", action="store_true",
                   help="print JSON; with --values each entry has 'repr', and 'value' "
                   "when JSON holds it exactly")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser(
        "rm",
        help="remove (unlink) a segment",
        description="Remove a segment's name from /dev/shm.  Refused without --force when "
        "the segment is in use: a process maps it (has it open).  "
        "Processes of other users or in other PID namespaces cannot be seen, so a segment "
        "that looks unused may still be in use there.  Processes that have it mapped keep "
        "their mapping; the memory is freed when the last one closes.  " + _PID_NOTE,
    )
    p.add_argument("name", help="segment name, or /dev/shm/NAME")
    p.add_argument("-f", "--force", action="store_true",
                   help="remove it even if it looks in use or is not a sharedbox segment")
    p.set_defaults(func=cmd_rm)

    add_copy_parser(sub)  # sharedbox copy SRC DST (in _copy.py)

    p = sub.add_parser(
        "demo",
        help="run a short multi-process demo",
        description="Create a 16 MiB SharedDict and start a producer process and three "
        "consumer processes (spawn) on it: the producer writes 200 readings and replaces a "
        "512 KiB NumPy frame (bytes without NumPy) 200 times while the consumers read "
        "them, then each consumer counts 20,000 times under its own key.  Prints what each "
        "process saw, the counter totals and the time per operation, then removes the "
        "segment.  Refuses a name that already exists; the child processes exit if the "
        "demo stops or takes longer than a minute.",
    )
    p.add_argument("--name",
                   help="name of the new segment (default: sharedbox_demo_<pid>); "
                   "must not exist yet")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    where = f"sharedbox {args.command}"
    try:
        if args.command in ("info", "dump", "rm"):
            args.name = _name_arg(args.name)
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe must fail here, not at exit
        return status
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error worth a message.
        # Point stdout at /dev/null so the flush at exit cannot fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except (CliError, _CopyError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, _UsageError) else 1
    except (SharedBoxError, OSError, ValueError) as exc:
        # The library's messages already say what is wrong and what to do.
        print(f"{where}: {_message(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, with the exception type
        print(f"{where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
