"""How every ``glnet`` command ends on a problem the user can fix: one ``<prog>: error:`` line, status 2.

Why one place: the commands parse with argparse or LightningCLI, which leave through ``SystemExit``
(``--help``, ``--print_config``, usage errors), and raise their own errors for bad files or
settings. Each command had its own wrapper for both, and they disagreed on the exit status.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["exit_code", "parse_args", "report"]


def exit_code(exc: SystemExit) -> int:
    """The status a ``SystemExit`` from argparse or LightningCLI stands for: None (``--help``) is 0, an
    int is itself, a message (a usage error) is 2."""
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 2


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
               check: Callable[[argparse.Namespace], None] | None = None) -> argparse.Namespace | int:
    """``parser.parse_args(argv)`` (then ``check(args)``, which may call ``parser.error``), or the exit status
    of ``--help`` / a usage error: commands return ints rather than exit, so they can be called in process."""
    try:
        args = parser.parse_args(None if argv is None else list(argv))
        if check is not None:
            check(args)
        return args
    except SystemExit as exc:
        return exit_code(exc)


def report(prog: str, exc: BaseException | str) -> int:
    """Print ``<prog>: error: <message on one line>`` to stderr; returns 2, the status for user errors."""
    print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
    return 2
