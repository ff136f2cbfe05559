"""Sweep levels and method variants as ``llmprune sweep`` takes them: "0.1:0.9:0.1" ranges, "0.5,2:4" lists (mixed
freely), "wanda+dsnot" variants; every mistake is a one-line error naming the flag."""
from __future__ import annotations

import math

from llmprune.errors import UserInputError
from llmprune.recipe import Groups, Sparsity, Unstructured, parse_sparsity

MAX_LEVELS = 100  # a range with more levels is a typo in its step (0.00001), not a sweep anyone runs
_ROUND = 10  # digits kept for range levels: 0.1:0.9:0.1 gives 0.3, not 0.30000000000000004


def _fraction(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserInputError(f"{flag}: '{text}' is not a number; write START:STOP:STEP, e.g. 0.1:0.9:0.1") from None
    if not 0.0 < value < 1.0:
        raise UserInputError(f"{flag}: {text} is outside (0, 1); sparsity levels are fractions such as 0.5")
    return value


def _range(item: str, flag: str) -> list[Unstructured]:
    """START:STOP:STEP, STOP included when it lies on the grid within rounding."""
    start_text, stop_text, step_text = item.split(":")
    start, stop = _fraction(start_text, flag), _fraction(stop_text, flag)
    try:
        step = float(step_text)
    except ValueError:
        raise UserInputError(f"{flag}: step '{step_text}' is not a number, e.g. 0.1:0.9:0.1") from None
    if not (step > 0 and math.isfinite(step)):
        raise UserInputError(f"{flag}: the step must be a positive number, e.g. 0.1:0.9:0.1")
    if stop < start:
        raise UserInputError(f"{flag}: empty range (STOP {stop:g} < START {start:g}); write START:STOP:STEP")
    count = math.floor((stop - start) / step + 1e-6) + 1
    if count > MAX_LEVELS:
        raise UserInputError(f"{flag}: {count} levels, each a compression and an evaluation; at most {MAX_LEVELS} "
                             f"(use a larger step, e.g. 0.1:0.9:0.1)")
    return [Unstructured(round(start + k * step, _ROUND)) for k in range(count)]


def parse_levels(text: str) -> tuple[Sparsity, ...]:
    """'0.1:0.9:0.1' (a range), '0.5,2:4,4:8' (a list), or both mixed: '0.1:0.5:0.1,2:4'. Duplicates dropped."""
    flag = f"--sparsity {text}"
    items = [part.strip() for part in str(text).split(",")]
    if not any(items):
        raise UserInputError(f"{flag}: no levels; give e.g. 0.1:0.9:0.1 or 0.5,2:4")
    levels: list[Sparsity] = []
    for item in items:
        if not item:
            raise UserInputError(f"{flag}: empty entry between commas; e.g. 0.5,0.6,2:4")
        if item.count(":") == 1 and not all(part.strip().isdigit() for part in item.split(":")):
            raise UserInputError(f"{flag}: '{item}' is neither N:M (two whole numbers, e.g. 2:4) nor a range; write "
                                 f"a range as START:STOP:STEP, e.g. 0.1:0.9:0.1")
        found = _range(item, flag) if item.count(":") == 2 else [parse_sparsity(item)]
        if any(isinstance(s, Groups) for s in found):
            raise UserInputError(f"{flag}: sweep levels are fractions, ranges or N:M; '{item}' is group sparsity")
        levels += [s for s in found if s not in levels]
    return tuple(levels)


def parse_variant(text: str, refine: str | None) -> tuple[str, str | None]:
    """'wanda' -> ('wanda', refine); 'wanda+dsnot' -> ('wanda', 'dsnot'). Unknown names fail with 'did you mean'."""
    from llmprune.prune import METHODS
    from llmprune.refine import REFINERS

    method, _, own = text.strip().partition("+")
    METHODS.get(method)
    chosen = own or refine
    if chosen:
        REFINERS.get(chosen)
    return method, chosen or None
