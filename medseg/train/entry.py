"""The command-line entry of the `python -m medseg.train.*` tools (export, manifest, quantize): a refusal is one
line on stderr with the README's exit code (2 usage, 3 invalid input, ...), never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from medseg.errors import MedsegError


def run_entry(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a tool's `main(argv)`; a MedsegError becomes `error: <one line>` on stderr and its exit code."""
    try:
        main(argv)
    except MedsegError as exc:
        sys.stderr.write(f"error: {exc.one_line()}\n")
        return exc.exit_code
    return 0
