"""``sharedbox copy SRC DST``: copy a dict between backends, byte for byte.

A location is ``shm:NAME`` (a SharedDict on this machine) or a Redis URL whose
fragment names the dict, ``redis://[user:password@]host[:port][/db]#NAME``
(``rediss://`` for TLS).  Values travel as the encoded bytes both backends
store, never decoded: nothing is unpickled, and a copy back gives the same
bytes.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from ._dict import SharedDict
from ._redis import RedisDict, _safe_url
from .errors import SegmentNotFoundError

__all__ = ["cmd_copy", "add_parser", "open_location"]


class CopyError(Exception):
    """A bad location or an impossible copy; the message is complete."""


def parse_location(text: str) -> tuple[str, str, str]:
    """(kind, name, url) of a location; url is '' for shm."""
    if text.startswith("shm:"):
        name = text[4:]
        if not name:
            raise CopyError(f"{text!r}: no segment name after 'shm:'")
        return "shm", name, ""
    if text.startswith(("redis://", "rediss://", "unix://")):
        parts = urlsplit(text)
        if not parts.fragment:
            raise CopyError(
                f"{_safe_url(text)!r}: name the dict in the URL's fragment, e.g. "
                "redis://localhost:6379/0#sensor_data"
            )
        return "redis", parts.fragment, urlunsplit(parts._replace(fragment=""))
    raise CopyError(
        f"{text!r} is not a location: use shm:NAME or redis://host[:port][/db]#NAME"
    )


def open_location(text: str, create: bool, max_keys: int = 128, size: int = 0) -> Any:
    """The dict at a location.  Handles accept pickled bytes because the
    copy never decodes a value."""
    kind, name, url = parse_location(text)
    try:
        if kind == "shm":
            if create:
                return SharedDict(name, size=size or 128 << 20, max_keys=max_keys)
            return SharedDict(name, create=False)
        return RedisDict(name, url=url, create=create, max_keys=max_keys)
    except SegmentNotFoundError:
        shown = text if kind == "shm" else f"{_safe_url(url)}#{name}"
        raise CopyError(f"no dict at {shown}") from None


def _raw_items(d: Any) -> Iterator[tuple[str, bytes]]:
    if isinstance(d, RedisDict):
        yield from d._raw_items()  # a page of keys and values per round trip
        return
    for key in d.keys_atomic():
        data = d._get_raw(key)
        if data is not None:  # deleted since the keys were listed
            yield key, data


def cmd_copy(args: argparse.Namespace) -> int:
    parse_location(args.dst)  # a mistyped destination is reported before any work
    src = open_location(args.src, create=False)
    try:
        items = list(_raw_items(src))
        max_keys = args.max_keys or max(src.max_keys, len(items), 1)
        size = args.size or max(1 << 20, 2 * sum(len(k) + len(v) + 128 for k, v in items))
        dst = open_location(args.dst, create=True, max_keys=max_keys, size=size)
        try:
            if isinstance(dst, RedisDict):
                dst._put_raw_many(items)
            else:
                for key, data in items:
                    dst._put_raw(key, data)
        finally:
            dst.close()
    finally:
        src.close()
    print(f"copied {len(items)} key(s) from {_shown(args.src)} to {_shown(args.dst)}")
    return 0


def _shown(location: str) -> str:
    return location if location.startswith("shm:") else _safe_url(location)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "copy",
        help="copy a dict between shared memory and Redis, byte for byte",
        description="Copy every key of SRC into DST (created if missing; keys already "
        "there are overwritten).  A location is shm:NAME or a Redis URL naming the dict "
        "in its fragment, redis://host:6379/0#NAME.  Values are copied as the encoded "
        "bytes both backends store: nothing is decoded or unpickled.",
    )
    p.add_argument("src", help="shm:NAME or redis://host[:port][/db]#NAME")
    p.add_argument("dst", help="shm:NAME or redis://host[:port][/db]#NAME")
    p.add_argument("--max-keys", type=int, default=0, metavar="N",
                   help="max_keys of a DST this creates (default: SRC's, or its key count)")
    p.add_argument("--size", type=int, default=0, metavar="BYTES",
                   help="size of a shm DST this creates (default: room for twice the data)")
    p.set_defaults(func=cmd_copy)
