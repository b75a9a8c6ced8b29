"""The one exception type for user errors, and the one close-match helper.

A :class:`UserError` is a problem with what the user gave (a file, a flag, a config value): the
``cellformer`` command prints it as one ``error: …`` line and exits with status 2, with no traceback
(set ``CELLFORMER_DEBUG=1`` or pass ``--debug`` to see one). Anything else that escapes is a bug and
keeps its traceback.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

#: Longest value echoed whole in a message; longer ones are cut (:func:`shorten`).
MAX_ECHO = 80
#: Longest message the ``cellformer`` command prints; the rest is cut.
MAX_MESSAGE = 2000


class UserError(ValueError):
    """Bad input from the user: the message says what, where (file, line, gene) and what was expected.

    It subclasses :class:`ValueError` so library callers that catch ``ValueError`` keep working.
    """


def shorten(text: object, limit: int = MAX_ECHO) -> str:
    """``text`` as a string, cut to about ``limit`` characters (``"ABC…" (20000000 characters)``) for messages."""
    s = str(text)
    if len(s) <= limit:
        return s
    return f"{s[: max(limit - 20, 8)]}… ({len(s):,} characters)"


def did_you_mean(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """``"; did you mean A, B?"`` for the choices closest to ``name`` (case-insensitive), or ``""``."""
    if len(name) > 4 * MAX_ECHO:  # nothing that long is a near miss (and matching it would be slow)
        return ""
    pool = list(choices)
    lower = {c.lower(): c for c in pool}
    close = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(lower[c] for c in close)}?" if close else ""


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """``unknown <kind> 'name'; available: …; did you mean …?`` as a :class:`UserError`."""
    pool = list(choices)
    shown = ", ".join(pool[:20]) + (f", … ({len(pool)} in all)" if len(pool) > 20 else "")
    return UserError(f"unknown {kind} {shorten(name)!r}; available: {shown or 'none'}{did_you_mean(name, pool)}")


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_number(
    key: str,
    value: object,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow: Iterable[object] = (),
) -> None:
    """Refuse a config value that is not a number in the allowed range, with one :class:`UserError` line
    naming the key, the value and the range (``low``/``high`` inclusive unless ``low_open``/``high_open``).

    ``integer`` asks for a whole number; ``allow`` lists extra accepted values (e.g. ``None``, ``-1``).
    Booleans are not numbers here.
    """
    if any(value is a or (type(value) is type(a) and value == a) for a in allow):
        return
    lo = "" if low is None else f"{'>' if low_open else '>='} {_number_text(low)}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {_number_text(high)}"
    rng = " and ".join(x for x in (lo, hi) if x)
    want = ("a whole number" if integer else "a number") + (f" {rng}" if rng else "")
    extra = [repr(a) for a in allow]
    if extra:
        want += f" (or {', '.join(extra)})"
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer and not isinstance(value, int):
        ok = isinstance(value, float) and value.is_integer()
    if ok:
        x = float(value)
        ok = math.isfinite(x)
        if ok and low is not None:
            ok = x > low if low_open else x >= low
        if ok and high is not None:
            ok = x < high if high_open else x <= high
    if not ok:
        raise UserError(f"{key}: {shorten(repr(value))} is not allowed; expected {want}")
