"""A ``PackedLinear``'s eager kernel call is checked and built once (``dispatch._plan``), then reused: these tests
make sure a reused launch never goes stale. The oracle is a fresh launcher call on the module's current tensors
(``<fmt>_matmul``, which checks and builds everything per call; its agreement with the torch reference is
test_kernels_matmul's job), so any state a plan kept from before a change shows up as a different output."""
from __future__ import annotations

import pytest
import torch

from llmprune import dispatch
from llmprune.errors import UserInputError
from llmprune.kernels import FORMATS_WITH_KERNELS, matmul_fn
from llmprune.packed_linear import PackedLinear


def module_of(fmt: str, seed: int, out_f: int = 48, in_f: int = 256) -> PackedLinear:
    from llmprune.evals.random_models import random_packed_linear

    bias = torch.randn(out_f, generator=torch.Generator().manual_seed(seed + 1))
    return random_packed_linear(fmt, out_f, in_f, "cpu", torch.Generator().manual_seed(seed), bias=bias)


def fresh(module: PackedLinear, x: torch.Tensor) -> torch.Tensor:
    """The module's output computed from scratch: every check and derived tensor rebuilt from its tensors now."""
    return matmul_fn(module.format)(x, module.packed()) + module.bias.to(x.dtype)


def tokens(n: int, k: int = 256, dtype=torch.float16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.fixture
def prepares(cpu_kernels, monkeypatch):
    """Counts, per format, how often dispatch builds a launch (``prepare``)."""
    counts = dict.fromkeys(FORMATS_WITH_KERNELS, 0)
    for fmt in FORMATS_WITH_KERNELS:
        launcher = dispatch._launchers[fmt]

        def counting(*args, fmt=fmt, prepare=launcher.prepare, **options):
            counts[fmt] += 1
            return prepare(*args, **options)

        monkeypatch.setitem(dispatch._launchers, fmt, launcher._replace(prepare=counting))
    return counts


@pytest.mark.parametrize("fmt", FORMATS_WITH_KERNELS)
def test_repeated_calls_build_the_launch_once_and_match_a_fresh_launch(prepares, fmt):
    module = module_of(fmt, seed=1)
    for n in (1, 3, 1, 6):  # decode and the 16-token block alike reuse the launch
        x = tokens(n, seed=n)
        torch.testing.assert_close(module(x), fresh(module, x), rtol=0, atol=0)
    assert prepares[fmt] == 1 and module.kernel_path == "triton"


def test_a_replaced_buffer_is_checked_and_used(prepares):
    module, other = module_of("int4", seed=2), module_of("int4", seed=3)
    x = tokens(2)
    module(x)
    module.qweight = other.qweight.clone()
    torch.testing.assert_close(module(x), fresh(module, x), rtol=0, atol=0)
    assert prepares["int4"] == 2
    module.zeros = module.zeros.int()  # a dtype the kernel does not take: the rebuilt launch refuses it
    with pytest.raises(UserInputError, match="'zeros' is torch.int32"):
        module(x)


def test_in_place_writes_rebuild_what_the_launch_derived(prepares):
    """The bias is kept converted to the activations' dtype and GQSA's kept map is derived from ``group_idx``:
    in-place writes to either must reach the output."""
    module = module_of("group_sparse_int4", seed=4)
    x = tokens(6)  # 5-16 tokens: the tl.dot block, which walks the kept map
    before = module(x)
    with torch.no_grad():
        module.bias.add_(1.0)
    torch.testing.assert_close(module(x), fresh(module, x), rtol=0, atol=0)
    assert not torch.equal(module(x), before)
    module.bias.data = module.bias.data + 1.0  # a storage swap, no version counted
    torch.testing.assert_close(module(x), fresh(module, x), rtol=0, atol=0)
    gi = module.group_idx
    groups = module.in_features // module.params["group"]
    moved = torch.stack([torch.randperm(groups, generator=torch.Generator().manual_seed(r))[: gi.shape[1]].sort().values
                         for r in range(gi.shape[0])]).to(gi.dtype)
    assert not torch.equal(moved, gi)
    gi.copy_(moved)
    torch.testing.assert_close(module(x), fresh(module, x), rtol=0, atol=0)
    assert prepares["group_sparse_int4"] == 4


def test_dtype_change_and_module_moves_rebuild_the_launch(prepares):
    module = module_of("sparse24_int4", seed=5)
    module(tokens(1))
    y = module(tokens(1, dtype=torch.bfloat16))  # the bias follows the activations' dtype
    assert y.dtype == torch.bfloat16 and prepares["sparse24_int4"] == 2
    torch.testing.assert_close(y, fresh(module, tokens(1, dtype=torch.bfloat16)), rtol=0, atol=0)
    module.half()  # Module.to / .half / .cuda replace the buffers through _apply
    assert "_kernel_plan" not in module.__dict__
    torch.testing.assert_close(module(tokens(1)), fresh(module, tokens(1)), rtol=0, atol=0)
    assert prepares["sparse24_int4"] == 3


def test_modules_built_under_inference_mode_run(prepares):
    """Inference tensors keep no version counter; the plan and GQSA's kept map must still work with them."""
    with torch.inference_mode():
        module = module_of("group_sparse_int4", seed=6)
        x = tokens(6)
        torch.testing.assert_close(module(x), fresh(module, x), rtol=0, atol=0)
        module(x)
    assert prepares["group_sparse_int4"] == 1


@pytest.fixture
def autotuned_int4(prepares, monkeypatch):
    """int4's launches as on a GPU (the autotuned twin, not the interpreter's fixed config), with a stand-in timer
    that runs nothing and makes the widest-BLOCK_N config win; counts the autotuner's runs."""
    from llmprune.kernels import _launch, int4

    pair = int4.KERNELS
    runs = {"gemv": 0, "gemm": 0, "timed": {}, "launched": []}
    kernel_run, launches = pair.gemv.run, runs["launched"]

    def launched(*args, grid, warmup, **kwargs):  # what reaches the JIT kernel: arguments, grid, meta-parameters
        named = {**dict(zip(pair.gemv.arg_names, args)), **kwargs}
        launches.append((len(args), grid(named) if callable(grid) else grid, kwargs))
        return kernel_run(*args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(pair.gemv, "run", launched)
    monkeypatch.setattr(pair, "interpret", False)
    flatten = _launch.flatten_input
    monkeypatch.setattr(_launch, "flatten_input", lambda x, k, fmt, interpret: flatten(x, k, fmt, True))
    for regime, tuned in (("gemv", pair.gemv_tuned), ("gemm", pair.gemm_tuned)):
        monkeypatch.setattr(tuned, "cache_results", False)
        monkeypatch.setattr(tuned, "cache", {})
        timed = runs["timed"]

        def bench(*args, config, tuned=tuned, timed=timed, **kwargs):
            timed[config] = 1.0 / config.kwargs["BLOCK_N"] + 1e-6 * config.kwargs["BLOCK_K"] + 1e-9 * len(timed)
            return [timed[config]] * 3

        monkeypatch.setattr(tuned, "_bench", bench)
        real_run = tuned.run

        def counted(*args, regime=regime, real_run=real_run, **kwargs):
            runs[regime] += 1
            return real_run(*args, **kwargs)

        monkeypatch.setattr(tuned, "run", counted)
    return runs


def test_a_plan_launches_the_autotuners_choice_directly_after_the_first_call(autotuned_int4, monkeypatch):
    """Triton's Autotuner.run costs more host time per call than our launcher: a PackedLinear's launch goes through
    it once per (regime, token bucket, dtype), then to the JIT kernel with the config it chose, and from the third
    call of as many tokens the whole launch is replayed (``Call.replays``)."""
    from llmprune.kernels import _launch

    module = module_of("int4", seed=7)
    first = module(tokens(1))
    chosen = module._kernel_plan.prepared.chosen
    timed, launched = autotuned_int4.pop("timed"), autotuned_int4.pop("launched")
    assert autotuned_int4 == {"gemv": 1, "gemm": 0} and list(chosen) == [("gemv", 1, torch.float16)]
    winner = min(timed, key=timed.get)
    assert len(timed) > 1 and chosen[("gemv", 1, torch.float16)] == winner.all_kwargs()  # the stand-in timer's pick
    timed.clear()
    again = module(tokens(1))
    assert autotuned_int4 == {"gemv": 1, "gemm": 0} and not timed
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert len(launched) == 2 and launched[1] == launched[0]  # the very launch the autotuner made
    assert list(module._kernel_plan.prepared.replays) == [(1, torch.float16)]
    rules, real_rules = [], _launch.device_rules
    monkeypatch.setattr(_launch, "device_rules", lambda device: rules.append(device))  # no regime choice in a replay
    torch.testing.assert_close(module(tokens(1)), first, rtol=0, atol=0)
    assert len(launched) == 3 and launched[2] == launched[0] and not rules
    monkeypatch.setattr(_launch, "device_rules", real_rules)
    module(tokens(3))  # another token bucket: tuned once, then reused
    module(tokens(3))
    for _ in range(3):
        module(tokens(20))  # prefill: tuned once, its launch not kept for replays
    assert set(module._kernel_plan.prepared.replays) == {(1, torch.float16), (3, torch.float16)}
    module(tokens(1, dtype=torch.bfloat16))  # another dtype: its own plan, tuned again
    assert autotuned_int4 == {"gemv": 3, "gemm": 1}
    x = tokens(1)
    torch.testing.assert_close(module(x), fresh(module, x), rtol=0, atol=0)


def test_compiled_graphs_run_the_modules_plan(prepares):
    """Under torch.compile a kernel call is the custom op; it finds the traced module by id and runs its plan (one
    launch built for many calls) as long as the module holds the tensors the graph passes."""
    module = module_of("int4", seed=8)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    x = tokens(2)
    want = fresh(module, x)
    for _ in range(3):
        torch.testing.assert_close(compiled(x), want, rtol=0, atol=0)
    assert prepares["int4"] == 1 and "_kernel_plan" in module.__dict__


def test_copies_get_their_own_launch_and_pickle_without_it(prepares):
    import copy
    import io

    module = module_of("sparse24", seed=9)
    x = tokens(1)
    want = module(x)
    twin = copy.deepcopy(module)
    assert "_kernel_plan" not in twin.__dict__ and dispatch._modules[id(twin)] is twin
    torch.testing.assert_close(twin(x), want, rtol=0, atol=0)
    assert twin._kernel_plan.prepared.tensors[0] is twin.values and prepares["sparse24"] == 2
    buffer = io.BytesIO()
    torch.save(module, buffer)  # the plan holds Triton kernels, which do not pickle
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)


def test_sparse24_layers_opted_in_take_the_semi_structured_weight_from_the_tables_batch(prepares, monkeypatch):
    """``use_semi_structured``: the plan builds the weight once and batches from the table's ``semi_from`` tokens use
    it; fewer tokens stay on the kernels; turning it off goes back to them. to_sparse_semi_structured needs CUDA, so a
    stand-in of twice the dense weight shows which path ran."""
    from torch.nn.functional import linear

    from llmprune.formats.sparse24 import unpack
    from llmprune.kernels import select, sparse24

    built = []

    def stand_in(packed):
        built.append(packed["values"])
        return (2 * unpack(packed)).to(packed["values"].dtype)

    monkeypatch.setattr(sparse24, "semi_structured_weight", stand_in)
    module = module_of("sparse24", seed=10)
    model = torch.nn.Sequential(module, module_of("int4", seed=11))
    assert dispatch.use_semi_structured(model) == 1
    start = select.rules(None).semi_from
    big, small = tokens(start, seed=1), tokens(start - 1, seed=2)
    twice = (2 * unpack(module.packed())).half()
    for _ in range(2):
        torch.testing.assert_close(module(big), linear(big, twice) + module.bias.half(), rtol=0, atol=0)
        torch.testing.assert_close(module(small), fresh(module, small), rtol=0, atol=0)
    assert len(built) == 1 and built[0] is module.values and prepares["sparse24"] == 1
    dispatch.use_semi_structured(model, enabled=False)
    torch.testing.assert_close(module(big), fresh(module, big), rtol=0, atol=0)
    assert len(built) == 1


@pytest.mark.parametrize("fmt", FORMATS_WITH_KERNELS)
def test_merged_projections_run_the_kernels_on_the_stacked_weight(prepares, fmt):
    """q/k/v of unequal widths merged (llmprune/merged_projections.py): one launch over the stacked packed weight
    gives each part what its own launch gives, at decode and prefill token counts."""
    from torch import nn

    from llmprune.merged_projections import merge_projections

    parent = nn.Module()
    parent.q_proj, parent.k_proj, parent.v_proj = (module_of(fmt, seed, out_f, in_f=128) for seed, out_f in
                                                   ((0, 48), (2, 16), (4, 32)))
    parts = [parent.q_proj, parent.k_proj, parent.v_proj]
    assert merge_projections(parent) == ["q_proj_k_proj_v_proj"]
    for m in (1, 20):
        x = tokens(m, k=128, seed=m)
        got = [parent.q_proj(x), parent.k_proj(x), parent.v_proj(x)]
        for g, part in zip(got, parts):
            torch.testing.assert_close(g, fresh(part, x), rtol=2e-3, atol=2e-3)
    assert parent.q_proj_k_proj_v_proj.kernel_path == "triton" and prepares[fmt] == 1
