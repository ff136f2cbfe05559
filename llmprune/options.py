"""``--option KEY=VALUE``: which names a recipe's steps read, and their values read strictly, as the parameter
they set expects.

Why: the CLI parses ``true``/``false`` and numbers but keeps any other text, and Python reads a text as true (so
``monotone_nm=maybe`` would run as on) or fails deep inside a layer (``max_cycles=abc``). Every step of a recipe
declares its options as keyword parameters with defaults; the default's type says how a value must read, and a value
that does not is refused in one line before any work starts."""
from __future__ import annotations

import inspect

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
        if parsed != parsed or (kind is int and not parsed.is_integer()):  # NaN: every comparison with it is False
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


def call_with_options(fn, *args, options: dict):
    """Pass the options ``fn`` declares as keyword arguments (damp, block, name, ...), nothing else."""
    params = inspect.signature(fn).parameters
    return fn(*args, **{k: v for k, v in options.items() if k in params})


INTERNAL_OPTIONS = {"name", "mask", "calib_seqlen", "scale_dtype", "damp", "block"}  # set by the plan or the recipe


def option_defaults(recipe) -> dict[str, tuple[object, str]]:
    """The ``--option`` names the steps of ``recipe`` read, each with its default and the step that reads it:
    keyword-only parameters of its method, refiner and quantizer functions (and of the joint SparseGPT + GPTQ
    sweep), plus those a registry entry names in ``options`` (name: default); the plan's own arguments aside."""
    from .prune import METHODS
    from .quant import QUANTIZERS
    from .refine import REFINERS

    refiner = None if recipe.refine is None else REFINERS.get(recipe.refine)
    quantizer = None if recipe.quant is None else QUANTIZERS.get(recipe.quant.method)
    entries = [e for e in (METHODS.get(recipe.method), refiner, quantizer) if e is not None]
    steps = [(e.name, e.fn) for e in entries]
    if recipe.quant is not None and recipe.method == "sparsegpt" and recipe.quant.method == "gptq":
        from .quant.gptq import sparsegpt_quant

        steps.append(("sparsegpt+gptq", sparsegpt_quant))
    defaults = {k: (v, e.name) for e in entries for k, v in e.meta.get("options", {}).items()}
    for step, fn in steps:
        for p in inspect.signature(fn).parameters.values():
            if p.kind == p.KEYWORD_ONLY:
                defaults.setdefault(p.name, (p.default, step))
    return {k: v for k, v in defaults.items() if k not in INTERNAL_OPTIONS}


def accepted_options(recipe) -> set[str]:
    """The ``--option`` names the steps of ``recipe`` read (``option_defaults``)."""
    return set(option_defaults(recipe))


def typed_options(recipe):
    """``recipe`` with each ``--option`` read as its parameter's default reads (``options.like``): an option no
    step of this recipe reads would be recorded in the manifest and silently do nothing, and a text where a
    flag or number belongs would run as something else or fail inside a layer: both are refused, in one line."""
    defaults = option_defaults(recipe)
    given = dict(recipe.options)
    fields = sorted(set(given) & {"damp", "block"})
    if fields:
        raise UserInputError(f"--option {fields[0]}: set it with --{fields[0]} (a recipe field)")
    unknown = sorted(set(given) - set(defaults) - {"calib_seqlen"})  # the sweep passes the window length
    if unknown:
        raise UserInputError(f"--option {unknown[0]}: not an option of this recipe; choose one of "
                             f"{', '.join(sorted(defaults)) or '(none)'}")
    typed = {k: like(v, k, *defaults.get(k, (None, ""))) for k, v in given.items()}
    return recipe.with_(options=tuple(sorted(typed.items())))
