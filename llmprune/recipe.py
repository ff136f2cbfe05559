"""A compression recipe as frozen data, and the parsers that turn CLI strings into it.

Parse at the boundary, trust inside: the engine and the algorithms receive ``Sparsity`` / ``QuantSpec`` values and
never re-parse strings. ``NM(n, m)`` means **n kept in every m** consecutive input weights (NVIDIA's convention: 2:4
keeps 2 of every 4).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Union

from .errors import UserInputError


@dataclass(frozen=True)
class Unstructured:
    """Prune ``fraction`` of the weights (compared per row or per layer, as the method defines)."""

    fraction: float

    def __post_init__(self):  # the API builds these directly: the same checks as parse_sparsity
        _check_fraction(self.fraction, f"Unstructured({self.fraction!r})")

    def __str__(self) -> str:
        return _fraction_text(self.fraction)


@dataclass(frozen=True)
class NM:
    """Keep ``n`` of every ``m`` consecutive weights along the input dimension."""

    n: int
    m: int

    def __post_init__(self):
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.n, self.m))
        if not whole or not 1 <= self.n < self.m:
            raise UserInputError(f"NM({self.n!r}, {self.m!r}): N:M keeps N of every M, two whole numbers with "
                                 f"1 <= N < M, e.g. NM(2, 4)")

    @property
    def fraction(self) -> float:
        return 1 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class Groups:
    """Within each output row, drop ``fraction`` of the groups of ``size`` consecutive input weights, whole."""

    size: int
    fraction: float

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise UserInputError(f"Groups({self.size!r}, {self.fraction!r}): the group size must be a whole number "
                                 f">= 1, e.g. Groups(16, 0.5)")
        _check_fraction(self.fraction, f"Groups({self.size!r}, {self.fraction!r})")

    def __str__(self) -> str:
        return f"{_fraction_text(self.fraction)}@g{self.size}"


def _check_fraction(fraction, where: str) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise UserInputError(f"{where}: the fraction pruned must be a number in (0, 1), e.g. 0.5")


def _fraction_text(fraction: float) -> str:
    """The shortest text that parses back to the same float (``:g`` would round 0.1249999 to 0.125, and a manifest
    holds the recipe as text: ``--from-manifest`` must prune exactly as much)."""
    return repr(float(fraction))


Sparsity = Union[Unstructured, NM, Groups]


def parse_sparsity(text: str, flag: str | None = None) -> Sparsity:
    """'0.5' -> Unstructured(0.5); '2:4' -> NM(2, 4); '0.5@g16' -> Groups(16, 0.5). One message per kind of mistake,
    starting with ``flag`` (default ``--sparsity TEXT``; an override names itself)."""
    raw = str(text).strip()
    flag = flag or f"--sparsity {raw}"
    if "@g" in raw:
        frac_text, _, size_text = raw.partition("@g")
        frac = parse_sparsity(frac_text, flag)
        if not isinstance(frac, Unstructured) or not size_text.isdigit() or int(size_text) < 1:
            raise UserInputError(f"{flag}: group sparsity is written FRACTION@gSIZE, e.g. 0.5@g16")
        return Groups(int(size_text), frac.fraction)
    if ":" in raw:
        parts = raw.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise UserInputError(f"{flag}: N:M needs two whole numbers, e.g. 2:4 (keep 2 of every 4)")
        n, m = (int(p) for p in parts)
        if n == 0:
            raise UserInputError(f"{flag}: N must be at least 1 (N:M keeps N of every M), e.g. 2:4")
        if n >= m:
            raise UserInputError(f"{flag}: N must be smaller than M (N:M keeps N of every M), e.g. 2:4")
        return NM(n, m)
    try:
        value = float(raw)
    except ValueError:
        raise UserInputError(f"{flag}: not a number; give a fraction in (0, 1) such as 0.5, or N:M such as 2:4") from None
    if not 0.0 < value < 1.0:
        raise UserInputError(f"{flag}: must be a fraction in (0, 1) (e.g. 0.5) or N:M (e.g. 2:4)")
    return Unstructured(value)


def sparsity_to_str(sparsity: Sparsity | None) -> str:
    return "dense" if sparsity is None else str(sparsity)


@dataclass(frozen=True)
class QuantSpec:
    """Uniform ``bits``-bit weight quantization in groups of ``group`` input weights (0 = one group per row)."""

    bits: int
    group: int = 0
    symmetric: bool = False
    method: str = "gptq"  # quantizer registry key: 'rtn', 'gptq', 'spqr'
    options: tuple[tuple[str, object], ...] = ()  # quantizer-specific settings, e.g. (('outlier_threshold', 0.2),)

    def __str__(self) -> str:
        text = f"w{self.bits}" + (f"g{self.group}" if self.group else "") + ("s" if self.symmetric else "")
        return text if self.method == "gptq" else f"{self.method}:{text}"


_QUANT_RE = re.compile(r"^w(?P<bits>\d+)(?:g(?P<group>\d+))?(?P<sym>s|-sym)?$")


def parse_quant(text: str, method: str = "gptq") -> QuantSpec:
    """'w4g128' -> 4-bit, groups of 128, asymmetric; 'w4g128s' symmetric; 'w4' one group per output row."""
    raw = str(text).strip().lower()
    flag = f"--quant {text}"
    match = _QUANT_RE.match(raw)
    if not match:
        raise UserInputError(f"{flag}: write wBITS[gGROUP][s], e.g. w4g128 (4-bit, groups of 128) or w3g16s (symmetric)")
    bits = int(match["bits"])
    if not 2 <= bits <= 8:
        raise UserInputError(f"{flag}: bits must be between 2 and 8")
    group = int(match["group"]) if match["group"] is not None else 0
    if match["group"] is not None and group < 1:
        raise UserInputError(f"{flag}: group size must be at least 1 (e.g. w4g128), or leave it out for per-row")
    return QuantSpec(bits=bits, group=group, symmetric=bool(match["sym"]), method=method)


@dataclass(frozen=True)
class Calibration:
    """Where calibration windows come from: ``nsamples`` random windows of ``seqlen`` tokens, seeded."""

    source: str = "c4"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0

    def __post_init__(self):  # every way in (flags, a manifest, a batch spec, the API) gets the same checks
        for name, low in (("nsamples", 1), ("seqlen", 2), ("seed", None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                least = "a whole number" if low is None else f"a whole number >= {low}"
                raise UserInputError(f"--{name} {value!r}: must be {least}")


EXPERT_CALIBRATION = ("routed", "all")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what a compression run does; with the model and the data it reproduces the run."""

    method: str = "wanda"
    sparsity: Sparsity | None = None
    quant: QuantSpec | None = None
    refine: str | None = None
    damp: float = 0.01
    block: int = 128
    ignore: tuple[str, ...] = ()  # regexes over module names: never compressed
    overrides: tuple[tuple[str, Sparsity], ...] = ()  # (regex, sparsity) pairs; the first match wins
    include_lm_head: bool = False
    options: tuple[tuple[str, object], ...] = ()  # method/refiner-specific settings
    experts: str = "routed"  # MoE experts' statistics: from the tokens routed to them | from every token

    def __post_init__(self):  # every way in (flags, a manifest, a batch spec, the API) gets the same checks
        if self.sparsity is not None and not isinstance(self.sparsity, (Unstructured, NM, Groups)):
            raise UserInputError(f"Recipe(sparsity={self.sparsity!r}): give Unstructured, NM or Groups, e.g. "
                                 f"parse_sparsity('2:4')")
        if self.quant is not None and not isinstance(self.quant, QuantSpec):
            raise UserInputError(f"Recipe(quant={self.quant!r}): give a QuantSpec, e.g. parse_quant('w4g128')")
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not 0 < self.damp < math.inf:
            raise UserInputError(f"--damp {self.damp!r}: must be a positive finite number (the reference uses 0.01)")
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise UserInputError(f"--block {self.block!r}: must be a positive number of columns (default 128)")
        if self.experts not in EXPERT_CALIBRATION:
            raise UserInputError(f"--calib-experts {self.experts!r}: choose {' or '.join(EXPERT_CALIBRATION)}")
        bare = isinstance(self.ignore, str)  # one pattern written bare, not split into its characters
        object.__setattr__(self, "ignore", (self.ignore,) if bare else tuple(self.ignore))
        for flag, pattern in [("--ignore", p) for p in self.ignore] + [("--override", p) for p, _ in self.overrides]:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise UserInputError(f"{flag} {pattern!r}: not a regular expression ({exc}); escape special "
                                     f"characters, e.g. 'mlp\\.down_proj'") from None

    def with_(self, **changes) -> "Recipe":
        return replace(self, **changes)

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)

    def reads_data(self) -> bool:
        """Whether any step reads calibration windows (magnitude and round-to-nearest read none). ``Plan.needs``
        decides per module once the model is loaded; this answer lets the data checks run before it loads."""
        from .prune import METHODS
        from .quant import QUANTIZERS
        from .refine import REFINERS

        steps = [QUANTIZERS.get(self.quant.method)] if self.quant is not None else []
        if self.sparsity is not None:
            steps += [METHODS.get(self.method)] + ([REFINERS.get(self.refine)] if self.refine else [])
        return any(step.needs for step in steps)

    def quant_as_run(self) -> QuantSpec | None:
        """The quant spec with the ``--option`` values folded in, the spec's own options winning: what the quantizer
        reads (``quant/spqr._settings``), so the checks before calibration see the same settings."""
        if self.quant is None:
            return None
        return replace(self.quant, options=tuple(sorted({**dict(self.options), **dict(self.quant.options)}.items())))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["sparsity"] = sparsity_to_str(self.sparsity)
        data["quant"] = None if self.quant is None else {**asdict(self.quant), "options": dict(self.quant.options)}
        data["overrides"] = [[pattern, str(sp)] for pattern, sp in self.overrides]
        data["ignore"] = list(self.ignore)
        data["options"] = dict(self.options)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        data = dict(data)
        sparsity = data.get("sparsity")
        data["sparsity"] = None if sparsity in (None, "dense") else parse_sparsity(sparsity)
        quant = data.get("quant")
        if quant is not None:
            quant = dict(quant)
            quant["options"] = tuple(sorted(dict(quant.get("options") or {}).items()))
            data["quant"] = QuantSpec(**quant)
        data["overrides"] = tuple((p, parse_sparsity(s)) for p, s in data.get("overrides", ()))
        data["ignore"] = data.get("ignore", ())
        data["options"] = tuple(sorted(dict(data.get("options") or {}).items()))
        return cls(**data)


def calibration_to_dict(calibration: Calibration) -> dict:
    return asdict(calibration)


