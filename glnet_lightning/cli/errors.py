"""How every ``glnet`` command ends: one ``<prog>: error:`` line for a problem the user can fix, and the
one table of exit codes.

Why one place: the commands parse with argparse or LightningCLI, which leave through ``SystemExit``
(``--help``, ``--print_config``, usage errors), and raise their own errors for bad files or
settings. Each command had its own wrapper for both, and they disagreed on the exit status.
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from glnet_lightning.errors import did_you_mean

__all__ = ["FAILED", "INTERRUPTED", "SIGTERM_EXIT_CODE", "USAGE_ERROR", "CommandParser", "exit_code",
           "option_strings", "parse_args", "report", "unknown_options"]

#: The command ran and found a failure the user cannot fix by changing the command (a trial or variant
#: failed, an export differs from eager).
FAILED = 1
#: A problem the user can fix: a bad option, file or setting (argparse's status for usage errors).
USAGE_ERROR = 2
#: Ctrl-C: what a shell reports for a process ended by SIGINT.
INTERRUPTED = 128 + int(signal.SIGINT)
#: Stopped by SIGTERM after saving what there was to save (SLURM pre-emption): what a shell reports for a
#: process ended by SIGTERM, so wrappers and schedulers do not mistake a pre-empted run for a finished one.
SIGTERM_EXIT_CODE = 128 + int(signal.SIGTERM)


def exit_code(exc: SystemExit) -> int:
    """The status a ``SystemExit`` from argparse or LightningCLI stands for: None (``--help``) is 0, an
    int is itself, a message (a usage error) is 2."""
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else USAGE_ERROR


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


def report(prog: str, exc: BaseException | str, code: int = USAGE_ERROR) -> int:
    """Print ``<prog>: error: <message on one line>`` to stderr; returns ``code`` (2, a user error, unless
    told otherwise)."""
    print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
    return code


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """The ``--long`` options ``parser`` takes (argparse's action list, which jsonargparse keeps too)."""
    return [o for action in getattr(parser, "_actions", []) for o in action.option_strings if o.startswith("--")]


def unknown_options(message: str, options: Sequence[str]) -> str | None:
    """argparse's ``unrecognized arguments: ...`` as ``unknown option --x (did you mean --y?); ...`` naming the
    closest of ``options``, or None for another message (or one naming no option)."""
    unknown = re.match(r"unrecognized arguments: (.*)$", " ".join(message.split()))
    keys = [word.split("=")[0] for word in unknown.group(1).split() if word.startswith("-")] if unknown else []
    return "; ".join(f"unknown option {key}{did_you_mean(key, options)}" for key in keys) or None


class CommandParser(argparse.ArgumentParser):
    """argparse for the ``glnet`` commands: no prefix matching, and a mistake is one line.

    Why: argparse takes ``--n-trial`` for ``--n-trials`` (and would take ``--b`` for whichever option
    starts so), so a typo can set another option; and its error is the whole usage block then the
    message. Here an unknown option names the closest real one, and the message says where the
    usage is.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        message = unknown_options(message, option_strings(self)) or message
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)
