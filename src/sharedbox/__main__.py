"""Command line: `python -m sharedbox <command>` (also the `sharedbox` script).

The commands live in sharedbox._cli; this module is only the entry point.
"""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
