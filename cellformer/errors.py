"""The one exception type for user errors, and the one close-match helper.

A :class:`UserError` is a problem with what the user gave (a file, a flag, a config value): the
``cellformer`` command prints it as one ``error: …`` line and exits with status 2, with no traceback
(set ``CELLFORMER_DEBUG=1`` or pass ``--debug`` to see one). Anything else that escapes is a bug and
keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the user: the message says what, where (file, line, gene) and what was expected.

    It subclasses :class:`ValueError` so library callers that catch ``ValueError`` keep working.
    """


def did_you_mean(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """``"; did you mean A, B?"`` for the choices closest to ``name`` (case-insensitive), or ``""``."""
    pool = list(choices)
    lower = {c.lower(): c for c in pool}
    close = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(lower[c] for c in close)}?" if close else ""


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """``unknown <kind> 'name'; available: …; did you mean …?`` as a :class:`UserError`."""
    pool = list(choices)
    shown = ", ".join(pool[:20]) + (f", … ({len(pool)} in all)" if len(pool) > 20 else "")
    return UserError(f"unknown {kind} {name!r}; available: {shown or 'none'}{did_you_mean(name, pool)}")
