"""The base of every error a user can fix; the bottom layer, so every package may raise it.

``cli/errors.py`` turns these into one ``<prog>: error:`` line and exit status 2.
"""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A problem the user can fix (a file, an option, a setting); the message is shown as is, on one line.

    The base of every such error in the package; subclasses that are also ``ValueError`` /
    ``OSError`` say so themselves.
    """
