"""Command line: `python -m sharedbox <command>` (also the `sharedbox` script)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sharedbox", description="A dict in POSIX shared memory, shared by many processes."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a short multi-process demo")
    demo.add_argument("--name", help="segment name to use (default: sharedbox_demo_<pid>)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import run

            return run(args.name)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line, no traceback
        print(f"sharedbox {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
