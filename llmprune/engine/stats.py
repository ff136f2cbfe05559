"""Per-input statistics of Linear layers, gathered by forward pre-hooks as float32 running means over tokens.

Semantics follow the reference code's running updates (SparseGPT ``add_batch``: ``H *= n/(n+k); H += 2/(n+k)·XXᵀ``;
Wanda ``scaler_row`` the same way with Σx²), so after T tokens:

- ``input_sq_norms[j] = Σ_t x_tj² / T``        (Wanda's scaler_row; ‖X_j‖₂² = T · input_sq_norms[j])
- ``hessian         = 2·Σ_t x_t x_tᵀ / T``    (SparseGPT / GPTQ's H)
- ``input_mean[j]   = Σ_t x_tj / T``, ``input_var[j] = Σ_t (x_tj − mean_j)² / T``   (DSnoT's expectation and variance)

Deviation: the reference code divides by the number of calibration *sequences*, we divide by *tokens* (the
contract in docs/CONTRACTS.md). The two differ by the constant factor seqlen, to which Wanda's per-row ranking and
SparseGPT's relative dampening (a fraction of mean(diag H)) are both invariant. The variance merges batches with Chan
et al.'s pairwise update rather than E[x²]−E[x]², which cancels catastrophically in float32.

Linears fed by the same tensor (q/k/v; gate/up) share one accumulator: the hooks only record the input tensors, and
after each layer forward ``StatsCollector.flush`` groups them by tensor identity (the recorded tensors are held until
then, so an identity cannot be reused within one forward) and updates each group's accumulator once.

The Hessian is symmetric, so wide inputs (MLP down projections: most of the FLOPs) accumulate only its upper block
triangle — row blocks of ``TRIANGLE_BLOCK`` against the columns from their diagonal on, about 40% fewer FLOPs — and
``to_stats`` mirrors it. Narrow inputs keep one full ``addmm`` (no gain measured there on CPU).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..model.layers import get_weight
from ..types import Stats

STAT_NAMES = frozenset({"input_sq_norms", "hessian", "input_mean", "input_var"})
TRIANGLE_BLOCK = 256  # row block of the upper-triangle Hessian update; used when dim >= 4 blocks


def add_gram_upper_(H: Tensor, X: Tensor, alpha: float, block: int = TRIANGLE_BLOCK) -> None:
    """``H += alpha·XᵀX`` on the upper block triangle (diagonal blocks whole); below it ``H`` is left stale."""
    dim = X.shape[1]
    if dim < 4 * block:
        H.addmm_(X.t(), X, alpha=alpha)
        return
    for start in range(0, dim, block):
        stop = min(start + block, dim)
        H[start:stop, start:].addmm_(X[:, start:stop].t(), X[:, start:], alpha=alpha)


def mirror_upper(H: Tensor, block: int = TRIANGLE_BLOCK) -> Tensor:
    """The full symmetric matrix from ``add_gram_upper_``'s valid upper part (a new tensor)."""
    if H.shape[0] < 4 * block:
        return H.clone()
    upper = H.triu()
    return upper + upper.triu(1).t()


def uninformed(dim: int, needs: frozenset[str], device) -> Stats:
    """Statistics for a Linear that no calibration token reached (an expert the router never chose): unit second
    moments and an identity Hessian, under which Wanda is magnitude pruning per row, SparseGPT prunes by magnitude
    without updates and GPTQ rounds to nearest. ``tokens=0`` marks them; the report lists such Linears.

    Deviation: the papers define nothing for a layer without data; this is their data-free limit."""
    ones = torch.ones(dim, dtype=torch.float32, device=device)
    return Stats(input_sq_norms=ones if "input_sq_norms" in needs else None,
                 hessian=torch.diag(2 * ones) if "hessian" in needs else None,
                 input_mean=torch.zeros_like(ones) if "input_mean" in needs else None,
                 input_var=ones.clone() if "input_var" in needs else None, tokens=0)


class StopLayer(Exception):
    """Raised by the hook of the last Linear a statistics forward needs: the rest of the layer need not run."""


class InputStats:
    """Running float32 statistics of one input feature space of size ``dim``; computes only ``needs``."""

    def __init__(self, dim: int, needs: frozenset[str], device):
        unknown = set(needs) - STAT_NAMES
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; known: {sorted(STAT_NAMES)}")
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float32, device=device)  # noqa: E731
        self.needs, self.tokens = frozenset(needs), 0
        self.sq = zeros(dim) if "input_sq_norms" in needs else None
        self.H = zeros(dim, dim) if "hessian" in needs else None
        moments = bool({"input_mean", "input_var"} & needs)
        self.mean = zeros(dim) if moments else None
        self.m2 = zeros(dim) if "input_var" in needs else None

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold in a batch of inputs ``x`` [..., dim] (any float dtype; accumulated in float32)."""
        X = x.reshape(-1, x.shape[-1]).float()
        n, k = self.tokens, X.shape[0]
        if k == 0:
            return
        total = n + k
        if self.sq is not None:
            self.sq.mul_(n / total).add_(X.square().sum(0), alpha=1 / total)
        if self.H is not None:
            add_gram_upper_(self.H.mul_(n / total), X, 2 / total)
        if self.mean is not None:
            batch_mean = X.mean(0)
            delta = batch_mean - self.mean
            if self.m2 is not None:
                self.m2.add_((X - batch_mean).square().sum(0)).add_(delta.square(), alpha=n * k / total)
            self.mean.add_(delta, alpha=k / total)
        self.tokens = total

    def to_stats(self) -> Stats:
        """A Stats record holding copies: a task that edits its H in place cannot corrupt its group's next module."""
        copy = lambda t: None if t is None else t.clone()  # noqa: E731
        var = None if self.m2 is None or self.tokens == 0 else self.m2 / self.tokens
        mean = self.mean if "input_mean" in self.needs else None
        hessian = None if self.H is None else mirror_upper(self.H)
        return Stats(input_sq_norms=copy(self.sq), hessian=hessian, input_mean=copy(mean), input_var=var,
                     tokens=self.tokens)


class StatsCollector:
    """Gathers the statistics each named Linear needs; Linears that read the same tensor share one accumulator.

    ``modules``: {qualified name: (module, needs)}. Use ``with collector.hooks():`` around forwards of the layer and call
    ``flush()`` after each forward; ``stats(name)`` afterwards.
    """

    def __init__(self, modules: dict[str, tuple[nn.Module, frozenset[str]]]):
        self.modules = {name: (module, frozenset(needs)) for name, (module, needs) in modules.items() if needs}
        self._pending: list[tuple[str, Tensor]] = []
        self._stop_early = False
        self._last: str | None = None  # the last hooked Linear of a forward, learned from the first one
        self._group_of: dict[str, tuple[str, ...]] = {}
        self._acc: dict[tuple[str, ...], InputStats] = {}

    @property
    def active(self) -> bool:
        return bool(self.modules)

    @contextmanager
    def hooks(self, *, stop_early: bool = False):
        """Record the hooked Linears' inputs. With ``stop_early``, from the second forward on, the hook of the last
        hooked Linear raises ``StopLayer`` once its input is recorded (in a Llama block that skips down_proj's matmul
        and the residual add, about a quarter of the block's FLOPs); the caller catches it."""
        self._stop_early = stop_early
        handles = [module.register_forward_pre_hook(self._hook(name)) for name, (module, _) in self.modules.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._pending.clear()
            self._stop_early = False

    def _hook(self, name: str):
        def hook(module, args):
            self._pending.append((name, args[0]))
            if self._stop_early and name == self._last:
                raise StopLayer

        return hook

    def _learn_last(self) -> None:
        """Stop after a Linear only if it ran exactly once and last in a complete forward (an expert or a Linear
        called twice could otherwise lose inputs)."""
        if self._last is None and self._pending:
            name = self._pending[-1][0]
            self._last = name if sum(n == name for n, _ in self._pending) == 1 else ""

    def flush(self) -> None:
        """Group this forward's recorded inputs by tensor identity and update each group's accumulator once."""
        self._learn_last()
        groups: dict[int, tuple[Tensor, list[str]]] = {}
        for name, x in self._pending:
            groups.setdefault(id(x), (x, []))[1].append(name)
        self._pending.clear()
        for x, names in groups.values():
            key = tuple(names)
            for name in names:
                if self._group_of.setdefault(name, key) != key:
                    raise RuntimeError(f"{name} shared its input with {self._group_of[name]} before, now with {key}")
            if key not in self._acc:
                needs = frozenset().union(*(self.modules[name][1] for name in names))
                self._acc[key] = InputStats(x.shape[-1], needs, x.device)
            self._acc[key].update(x)

    def stats(self, name: str) -> Stats:
        """The statistics of ``name``'s input (shared with the Linears that read the same tensor); empty if it needs
        none; ``uninformed`` ones if it needs some but no token reached it."""
        key = self._group_of.get(name)
        if key is not None:
            return self._acc[key].to_stats()
        if name in self.modules:
            module, needs = self.modules[name]
            weight = get_weight(module)
            return uninformed(weight.shape[1], needs, weight.device)
        return Stats()

    def groups(self) -> list[tuple[str, ...]]:
        return list(self._acc)
