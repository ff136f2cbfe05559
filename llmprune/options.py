"""``--option KEY=VALUE`` values read strictly, as the parameter they set expects.

Why: the CLI parses ``true``/``false`` and numbers but keeps any other text, and Python reads a text as true (so
``monotone_nm=maybe`` would run as on) or fails deep inside a layer (``max_cycles=abc``). Every step of a recipe declares
its options as keyword parameters with defaults; the default's type says how a value must read, and a value that does
not is refused in one line before any work starts."""
from __future__ import annotations

from .errors import UserInputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def flag(value, key: str) -> bool:
    """An on/off value; anything else is refused rather than read as off or on."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE | _FALSE:
        raise UserInputError(f"--option {key}={value}: write true or false")
    return text in _TRUE


def number(value, key: str, kind: type, who: str = "this option") -> int | float:
    """``value`` as ``kind`` (int or float): '2.5' is not a whole number (int() would truncate it), 'abc' no number."""
    try:
        if isinstance(value, bool):
            raise ValueError
        parsed = float(value)
        if kind is int and not parsed.is_integer():
            raise ValueError
        return int(parsed) if kind is int else parsed
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise UserInputError(f"--option {key}={value}: {who} needs {what} here") from None


def like(value, key: str, default, who: str = "this option"):
    """``value`` read as the type of ``default`` (bool, int or float) for the step ``who``; other defaults (None,
    text) take it as it is."""
    if isinstance(default, bool):
        return flag(value, key)
    if isinstance(default, (int, float)):
        return number(value, key, type(default), who)
    return value
