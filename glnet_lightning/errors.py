"""The base of every error a user can fix, and the one close-match helper their messages use; the bottom
layer, so every package may raise them.

``cli/errors.py`` turns these into one ``<prog>: error:`` line and exit status 2.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["UserError", "close_matches", "did_you_mean"]


class UserError(Exception):
    """A problem the user can fix (a file, an option, a setting); the message is shown as is, on one line.

    The base of every such error in the package; subclasses that are also ``ValueError`` /
    ``OSError`` say so themselves.
    """


def close_matches(word: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """The ``n`` choices spelled most like ``word`` (a typo of a name, option or file), best first."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the choice spelled most like ``word``, or nothing."""
    match = close_matches(word, choices)
    return f" (did you mean {match[0]}?)" if match else ""
