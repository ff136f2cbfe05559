"""Merged projections (llmprune/merged_projections.py): a stacked packed weight holds exactly its parts' rows (each
format's own ``unpack`` is the oracle), a merged model computes what the unmerged one did with one call of each
merged layer per forward, slices never serve a stale result, and merged models copy, move, compile and refuse to be
saved."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import llmprune
from llmprune import checkpoint
from llmprune.errors import UserInputError
from llmprune.evals import bench, random_models
from llmprune.evals.random_models import random_packed_linear
from llmprune.formats import get_format, stack_rows
from llmprune.merged_projections import ProjectionSlice, merge_projections
from llmprune.packed_linear import PackedLinear

from .packed_fixtures import pack_model_
from .tiny_models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

PACKED = [f for f in bench.FORMATS if f != "dense"]
ROWS = (48, 16, 32)  # q, k, v of a GQA block: unequal parts, each a multiple of spqr's 16-row statistics blocks


def packed_layer(fmt: str, out_f: int, in_f: int = 64, seed: int = 0, dtype: str = "float32") -> PackedLinear:
    return random_packed_linear(fmt, out_f, in_f, "cpu", torch.Generator().manual_seed(seed), dtype)


@pytest.mark.parametrize("fmt", PACKED)
def test_a_stacked_weight_holds_its_parts_rows(fmt):
    parts = [packed_layer(fmt, rows, seed=i) for i, rows in enumerate(ROWS)]
    unpack = get_format(fmt).unpack
    stacked = stack_rows(fmt, [p.packed() for p in parts], 64)
    want = torch.cat([unpack(p.packed(), 64) for p in parts])
    assert torch.equal(unpack(stacked, 64), want)
    merged = PackedLinear.from_packed(stacked, fmt, 64)  # the format's shape and dtype specs accept it
    assert merged.out_features == sum(ROWS)
    if fmt == "spqr":
        assert len({p.params["nnz"] for p in parts}) > 1  # the CSR shift is exercised with unequal outlier counts
        assert merged.params["nnz"] == sum(p.params["nnz"] for p in parts)


@pytest.mark.parametrize("fmt", ["int4", "spqr"])
def test_parts_packed_with_different_parameters_are_refused(fmt):
    parts = [packed_layer(fmt, 16, dtype="float32"), packed_layer(fmt, 16, seed=1, dtype="float16")]
    with pytest.raises(UserInputError, match="cannot share one weight"):
        stack_rows(fmt, [p.packed() for p in parts], 64)


@pytest.mark.parametrize("fmt", bench.FORMATS)
def test_merged_models_compute_what_they_computed_with_one_call_per_merged_layer(fmt):
    model = random_models.build_random("tiny", fmt, "cpu", "float32", seed=1)
    merged = copy.deepcopy(model)
    names = merge_projections(merged)
    assert names == [f"model.layers.{i}.{group}" for i in range(2)
                     for group in ("self_attn.q_proj_k_proj_v_proj", "mlp.gate_proj_up_proj")]
    calls = []
    for name in names:
        merged.get_submodule(name).register_forward_hook(lambda *args: calls.append(1))
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(prompt).logits, model(prompt).logits, rtol=1e-5, atol=1e-6)
    assert len(calls) == 4
    slices = [m for m in merged.modules() if isinstance(m, ProjectionSlice)]
    assert len(slices) == 10 and all(s.shared.input is None for s in slices)  # results let go after the last part
    assert torch.equal(bench.greedy(merged, prompt, 5), bench.greedy(model, prompt, 5))
    assert merge_projections(merged) == []  # slices are not merged again


@pytest.mark.parametrize("arch, merged_per_layer",
                         [("qwen2", 2), ("mistral", 2), ("gemma3", 2), ("opt", 1), ("phi3", 0), ("gpt2", 0)])
def test_architectures_merge_their_named_siblings_biases_included(arch, merged_per_layer):
    """Qwen2 biases q/k/v, Gemma3 normalizes q and k after projecting them, OPT names q/k/v alike but not its MLP,
    Phi-3 and GPT-2 come merged already."""
    model, _ = tiny_model(arch)
    merged = copy.deepcopy(model)
    assert len(merge_projections(merged)) == 2 * merged_per_layer
    prompt = torch.randint(2, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(prompt).logits, model(prompt).logits, rtol=1e-5, atol=1e-5)


def mlp_pair(seed: int = 0):
    """A parent with gate/up Linears (one with a bias), its merged copy, and an input."""
    torch.manual_seed(seed)
    parent = nn.Module()
    parent.gate_proj, parent.up_proj = nn.Linear(8, 6, bias=False), nn.Linear(8, 4)
    merged = copy.deepcopy(parent)
    assert merge_projections(merged) == ["gate_proj_up_proj"]
    return parent, merged, torch.randn(3, 8)


def test_slices_never_serve_a_stale_result():
    parent, merged, x = mlp_pair()
    y = torch.randn(3, 8)
    calls = []
    merged.gate_proj_up_proj.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        assert torch.equal(merged.gate_proj(x), parent.gate_proj(x))
        merged.gate_proj(x).zero_()  # its part taken before: a fresh one (the caller may write what it gets)
        assert torch.equal(merged.gate_proj(x), parent.gate_proj(x))
        torch.testing.assert_close(merged.up_proj(y), parent.up_proj(y))  # another input: computed for it
        merged.gate_proj(x)
        x.mul_(2)  # written in place since: recomputed
        torch.testing.assert_close(merged.up_proj(x), parent.up_proj(x))
    assert len(calls) == 6


def test_copies_and_moves_keep_each_slice_on_its_own_merged_layer():
    parent, merged, x = mlp_pair()
    twin = copy.deepcopy(merged)
    assert twin.gate_proj.shared.linear is twin.gate_proj_up_proj is not merged.gate_proj_up_proj
    twin.double()
    with torch.no_grad():
        got = twin.up_proj(x.double())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, parent.up_proj.double()(x.double()))


def test_compiled_graph_has_one_matmul_per_merged_layer():
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep(gm, inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    model = random_models.build_random("tiny", "dense", "cpu", "float32", seed=1)
    mlp = model.model.layers[0].mlp
    want = mlp(torch.randn(3, 64, generator=torch.Generator().manual_seed(0)))
    merge_projections(mlp)
    torch._dynamo.reset()
    compiled = torch.compile(mlp, backend=aot_autograd(fw_compiler=keep), fullgraph=True)
    with torch.no_grad():
        got = compiled(torch.randn(3, 64, generator=torch.Generator().manual_seed(0)))
    torch._dynamo.reset()
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    assert graphs and graphs[0].code.count("aten.mm.default") == 2  # gate/up merged, then down


@pytest.mark.parametrize("fmt", ["sparse24_int4", "spqr"])
def test_a_loaded_checkpoint_merges(tmp_path, fmt):
    """Checkpoints load as meta skeletons filled from the shards; merging one computes what the dense weights that
    were packed compute (Qwen2: q/k/v biases)."""
    model, _ = tiny_model("qwen2")
    layers = pack_model_(model, fmt)  # the model's weights set to what the format stores
    checkpoint.save(model, tmp_path / "ckpt", layers=layers)
    loaded, _, _ = llmprune.load(tmp_path / "ckpt")
    assert len(llmprune.merge_projections(loaded)) == 4
    prompt = torch.randint(2, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(prompt).logits, model(prompt).logits, rtol=1e-4, atol=1e-4)


def test_a_merged_model_is_neither_compressed_nor_saved(tmp_path):
    model = random_models.build_random("tiny", "dense", "cpu", "float32", seed=1)
    merge_projections(model)
    recipe = llmprune.Recipe(method="magnitude", sparsity=llmprune.parse_sparsity("0.5"))
    with pytest.raises(UserInputError, match="compress the model before merging"):
        llmprune.compress_(model, recipe)
    with pytest.raises(UserInputError, match="save the model before merging"):
        checkpoint.save(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_groups_that_cannot_share_a_weight_are_left_with_a_warning():
    model = random_models.build_random("tiny", "int4", "cpu", "float32", seed=1)
    attn = model.model.layers[0].self_attn
    attn.k_proj = packed_layer("sparse24", attn.k_proj.out_features)
    with pytest.warns(UserWarning, match="self_attn.q_proj/k_proj/v_proj not merged: formats int4, sparse24"):
        names = merge_projections(model)
    assert len(names) == 3 and isinstance(attn.k_proj, PackedLinear)
    mlp = model.model.layers[0].mlp
    mlp.gate_proj, mlp.up_proj = nn.Linear(64, 128), nn.Linear(64, 128, device="meta")
    with pytest.warns(UserWarning) as caught:  # q/k/v warn again
        assert merge_projections(model) == []
    assert any("gate_proj/up_proj not merged: the layers sit on different devices" in str(w.message) for w in caught)


def test_bench_measures_merged_formats_and_refuses_bad_modifiers(monkeypatch):
    monkeypatch.setattr(bench, "COMPILE_BACKEND", "eager")
    result = bench.run_bench("tiny", ["int4+merged", "dense+merged"], [2], new_tokens=3, prompt_len=4, device="cpu",
                             dtype="float32", variants=["eager", "static+compile"], runs=1)
    rows = {(r["format"], r["variant"]): r for r in result["rows"]}
    assert set(rows) == {(f, v) for f in ("dense", "int4+merged", "dense+merged") for v in ("eager", "static+compile")}
    assert rows[("int4+merged", "eager")]["paths"] == {"reference": 8}  # 14 Linears, 4 of them merged layers
    assert all(r["agree"] == 1.0 for (f, v), r in rows.items() if v == "static+compile")
    for bad in ("int4+semi", "int5+merged", "int4+merged+merged", "int4+fused"):
        with pytest.raises(UserInputError, match="--format"):
            bench.check_inputs("tiny", [bad], [1], "cpu", "float32", ["eager"])


def test_modifiers_combine():
    """``sparse24+semi+merged``: the merged layers keep the semi-structured option their parts had."""
    net = bench._build("tiny", "sparse24+semi+merged", "cpu", "float32", 0)
    layers = [m for m in net.modules() if isinstance(m, PackedLinear)]
    assert len(layers) == 8 and sum(m.out_features > 64 for m in layers) == 4
    assert all(m.format == "sparse24" and m.kernel_options == {"semi_structured": True} for m in layers)
