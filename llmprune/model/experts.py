"""Mixture-of-experts blocks: fused 3-D expert weights as per-expert Linears, and back.

transformers 5 stores a MoE block's experts as two 3-D parameters inside one module (``gate_up_proj`` [E, 2I, H] and
``down_proj`` [E, H, I], the ``@use_experts_implementation`` layout of Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3 and
most others), not as ``nn.Linear`` layers. Every Linear-based algorithm would pass over them and leave most of the
model's weights dense. ``unfuse_experts_`` replaces each such module by ``RoutedExperts``: a ``ModuleList`` of
``ExpertMLP`` blocks with plain ``gate_proj`` / ``up_proj`` / ``down_proj`` Linears (``mlp.experts.3.down_proj``)
computing the same function, so that each expert's Linears see exactly the tokens the router sends them, and their
statistics are those of the deployed model (per-expert calibration on routed tokens).

Each replacement is checked when it is made: the fused module's own forward and ``RoutedExperts`` must agree on random
tokens and routes, so a class whose forward differs from the standard one is refused, never silently changed. Layouts
other than the standard one (transposed, interleaved, biased, without gate, with a post-expert norm: gpt-oss, Aria,
NemotronH...) are refused with one line: pruning would otherwise leave their experts dense without a word.

``fused_experts(model)`` puts the 3-D parameters back for the duration of a plain Hugging Face save, so a dense
checkpoint loads in transformers as the original architecture.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..errors import UnsupportedArchitecture

_STANDARD = {"has_gate": True, "has_bias": False, "is_transposed": False, "is_concatenated": True,
             "has_post_expert_norm": False}


_EXPERT_WEIGHTS = ("gate_up_proj", "up_proj", "down_proj", "w1", "w2", "w3")


def _is_fused(module: nn.Module) -> bool:
    """A module holding 3-D expert weights, in any layout (not, say, a Conv1d's 3-D kernel)."""
    own = dict(module.named_parameters(recurse=False))
    return any(own.get(key) is not None and own[key].ndim == 3 for key in _EXPERT_WEIGHTS) or (
        type(module).__name__.endswith("Experts") and any(p.ndim == 3 for p in own.values()))


def _check_layout(name: str, module: nn.Module) -> tuple[int, int, int]:
    """``(experts, intermediate, hidden)`` of a standard-layout fused module, else a one-line refusal."""
    odd = [key for key, want in _STANDARD.items() if getattr(module, key, want) != want]
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    shapes_ok = (isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter) and gate_up.ndim == 3
                 and down.ndim == 3 and gate_up.shape[0] == down.shape[0] and gate_up.shape[1] == 2 * down.shape[2]
                 and gate_up.shape[2] == down.shape[1])
    if odd or not shapes_ok:
        why = ", ".join(f"{key}={getattr(module, key)}" for key in odd) or "3-D weights other than gate_up_proj " \
                                                                           "[E, 2I, H] and down_proj [E, H, I]"
        raise UnsupportedArchitecture(f"{name}: {type(module).__name__} stores its experts fused in a layout "
                                      f"llmprune cannot split ({why}); its experts would stay dense, so this "
                                      f"architecture is not supported")
    return gate_up.shape[0], down.shape[2], down.shape[1]


def _linear(weight: Tensor) -> nn.Linear:
    """A bias-free Linear holding ``weight`` [out, in] (its own storage), without a random initialisation."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight if weight.is_meta else weight.clone(), requires_grad=False)
    return linear


class ExpertMLP(nn.Module):
    """One expert's ``gate_proj`` / ``up_proj`` / ``down_proj`` as plain Linears (``RoutedExperts`` calls them)."""

    def __init__(self, gate: Tensor, up: Tensor, down: Tensor):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = _linear(gate), _linear(up), _linear(down)


class RoutedExperts(nn.ModuleList):
    """The experts of one MoE block as a ModuleList of ``ExpertMLP``; called like the fused module it replaces,
    ``(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]``.

    The fused module is kept, with its 3-D parameters on the meta device (no memory), as a template: its
    ``_apply_gate`` (the activation, and any clamp a model adds) is the one called here, and ``fuse`` restores it.
    """

    def __init__(self, template: nn.Module, experts: list[ExpertMLP]):
        super().__init__(experts)
        object.__setattr__(self, "template", template)  # not a submodule: no parameters, not in the state dict
        self.calibrate_all = False  # see ``calibrating_all_experts``

    def forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        out = torch.zeros_like(hidden_states)
        hit = range(len(self)) if self.calibrate_all else top_k_index.unique().tolist()  # one host sync, not E
        for e in hit:
            if e >= len(self):  # transformers' sentinel for experts outside this rank
                continue
            expert = self[e]
            token, slot = torch.where(top_k_index == e)
            x = hidden_states if self.calibrate_all else hidden_states[token]
            gated = self.template._apply_gate(torch.cat([expert.gate_proj(x), expert.up_proj(x)], dim=-1))
            y = expert.down_proj(gated)
            y = (y[token] if self.calibrate_all else y) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out

    def fuse(self) -> nn.Module:
        """The template with its 3-D parameters rebuilt from the experts' (dense) Linears."""
        for expert in self:
            for linear in (expert.gate_proj, expert.up_proj, expert.down_proj):
                if type(linear) is not nn.Linear:
                    raise UnsupportedArchitecture(f"expert layer {type(linear).__name__} is packed; only dense "
                                                  f"experts can be written in the fused Hugging Face layout")
        gate_up = torch.stack([torch.cat([x.gate_proj.weight, x.up_proj.weight]) for x in self]).detach()
        down = torch.stack([x.down_proj.weight for x in self]).detach()
        self.template.gate_up_proj = nn.Parameter(gate_up, requires_grad=False)
        self.template.down_proj = nn.Parameter(down, requires_grad=False)
        inter = self[0].gate_proj.out_features
        for e, expert in enumerate(self):  # the experts become views of the fused tensors: one copy, not two
            for linear, weight in ((expert.gate_proj, gate_up[e, :inter]), (expert.up_proj, gate_up[e, inter:]),
                                   (expert.down_proj, down[e])):
                linear.weight = nn.Parameter(weight, requires_grad=False)
        return self.template


def _split(name: str, module: nn.Module) -> RoutedExperts:
    n_experts, inter, _ = _check_layout(name, module)
    gate_up, down = module.gate_up_proj.detach(), module.down_proj.detach()
    experts = [ExpertMLP(gate_up[e, :inter], gate_up[e, inter:], down[e]) for e in range(n_experts)]
    return RoutedExperts(module, experts)


def _float_probe(fused: nn.Module, n: int) -> nn.Module:
    """A float32 stand-in for ``fused`` holding copies of its first ``n`` experts only (the rest of its state is
    shared): a check in the model's 16-bit dtype could not tell a 1% change from rounding, and a float32 copy of all
    experts can be gigabytes."""
    probe = object.__new__(type(fused))
    probe.__dict__.update(fused.__dict__)
    probe._parameters = {}
    for key in ("gate_up_proj", "down_proj"):
        probe._parameters[key] = nn.Parameter(getattr(fused, key)[:n].detach().float(), requires_grad=False)
    if isinstance(getattr(fused, "num_experts", None), int):
        probe.num_experts = n
    return probe


@torch.no_grad()
def _check_same(name: str, fused: nn.Module, tokens: int = 12) -> None:
    """The fused module's own (eager) forward and ``RoutedExperts`` must agree, in float32, on random tokens and
    routes over its first experts."""
    generator = torch.Generator().manual_seed(0)
    probe = _float_probe(fused, min(4, fused.gate_up_proj.shape[0]))
    routed = _split(name, probe)
    n_experts, hidden = len(routed), routed[0].gate_proj.in_features
    top_k = min(2, n_experts)
    device = fused.gate_up_proj.device
    x = torch.randn(tokens, hidden, generator=generator).to(device)
    index = torch.stack([torch.randperm(n_experts, generator=generator)[:top_k] for _ in range(tokens)]).to(device)
    weights = torch.rand(tokens, top_k, generator=generator).to(device)
    forward = getattr(type(fused).forward, "__wrapped__", type(fused).forward)  # the eager forward
    want, got = forward(probe, x, index, weights), routed(x, index, weights)
    scale = want.abs().max().clamp_min(1e-6)
    if want.shape != got.shape or ((want - got).abs().max() / scale) > 1e-4:
        raise UnsupportedArchitecture(f"{name}: {type(fused).__name__}'s forward is not the standard routed-experts "
                                      f"computation, so llmprune cannot split its experts; this architecture is not "
                                      f"supported")


def _to_meta_(module: nn.Module) -> None:
    for key in ("gate_up_proj", "down_proj"):
        param = getattr(module, key)
        setattr(module, key, nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device="meta"),
                                          requires_grad=False))


def unfuse_experts_(model: nn.Module) -> int:
    """Replace every fused-experts module by an equivalent ``RoutedExperts`` (checked); returns how many.

    Idempotent (a model with none left is unchanged). On a meta-device skeleton (checkpoint loading) the check is
    skipped: there are no values to compare, and the layout checks still run.
    """
    fused = [(name, m) for name, m in model.named_modules() if not isinstance(m, RoutedExperts) and _is_fused(m)]
    for name, module in fused:
        if not module.gate_up_proj.is_meta:
            _check_same(name, module)
        routed = _split(name, module)
        _to_meta_(module)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, routed)
    return len(fused)


@contextlib.contextmanager
def calibrating_all_experts(model: nn.Module, enabled: bool = True):
    """Within the block every expert also runs on every token, so that its Linears' statistics cover all of them
    (llm-compressor's ``calibrate_all_experts``: rare experts get as much data as common ones), while the block's
    output still combines only the routed experts' results, as the model computes it."""
    routed = [m for m in model.modules() if isinstance(m, RoutedExperts)] if enabled else []
    for module in routed:
        module.calibrate_all = True
    try:
        yield
    finally:
        for module in routed:
            module.calibrate_all = False


def has_routed_experts(module: nn.Module) -> bool:
    return any(isinstance(m, RoutedExperts) for m in module.modules())


def _fuse_each(model: nn.Module):
    """Swap each ``RoutedExperts`` for its fused template, yielding ``(owner, attr, routed)`` after each swap."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, RoutedExperts)]:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, module.fuse())
        yield owner, attr, module


def fuse_experts_(model: nn.Module) -> int:
    """Put every ``RoutedExperts`` (all of whose Linears are dense) back in transformers' fused layout for good,
    e.g. after a packed model is dequantized; returns how many."""
    return sum(1 for _ in _fuse_each(model))


@contextlib.contextmanager
def fused_experts(model: nn.Module):
    """Within the block, the model holds its experts in transformers' fused layout (for ``save_pretrained``);
    afterwards they are ``RoutedExperts`` again."""
    swapped = []
    try:
        for swap in _fuse_each(model):  # appended one by one: a failing fuse still restores those done
            swapped.append(swap)
        yield model
    finally:
        for owner, attr, module in swapped:
            _to_meta_(module.template)
            setattr(owner, attr, module)
