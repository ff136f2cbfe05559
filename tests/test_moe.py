"""Mixture-of-experts models: fused experts split into Linears that compute the same function, pruned from the tokens
routed to them, saved and loaded in every form (llmprune folder, plain HF folder), and refused where unsupported."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmprune import Recipe
from llmprune.compress import compress_
from llmprune.data.calibration import CalibrationSet
from llmprune.errors import UnsupportedArchitecture
from llmprune.model.experts import RoutedExperts, fused_experts, unfuse_experts_
from llmprune.recipe import parse_sparsity
from tests.tiny_models import EXPERTS, MOE_ARCHS, save_tiny, tiny_model


def _ids(n=2, seqlen=24, seed=0):
    return torch.randint(2, 300, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_split_experts_compute_what_the_fused_ones_did_and_hold_every_expert_weight(arch):
    model, _ = tiny_model(arch)
    fused = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 3)
    want = _logits(model, _ids())
    assert unfuse_experts_(model) == sum(isinstance(m, RoutedExperts) for m in model.modules()) > 0
    split = sum(m.weight.numel() for n, m in model.named_modules() if ".experts." in n and isinstance(m, nn.Linear))
    assert split == fused and not any(p.ndim == 3 for p in model.parameters())
    torch.testing.assert_close(_logits(model, _ids()), want, rtol=0, atol=1e-5)
    assert unfuse_experts_(model) == 0  # idempotent


def test_unsupported_expert_layouts_are_refused_in_one_line():
    import transformers as tf

    config = tf.GptOssConfig(vocab_size=320, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                             num_experts_per_tok=2)
    with pytest.raises(UnsupportedArchitecture, match=r"is_transposed=True.*not supported") as info:
        unfuse_experts_(tf.GptOssForCausalLM(config))
    assert "\n" not in str(info.value)


def test_an_experts_class_whose_forward_differs_is_refused(monkeypatch):
    model, _ = tiny_model("mixtral")
    experts = model.model.layers[0].mlp.experts
    original = type(experts).forward.__wrapped__
    monkeypatch.setattr(type(experts).forward, "__wrapped__", lambda self, *a: 2 * original(self, *a))
    with pytest.raises(UnsupportedArchitecture, match="not the standard routed-experts computation"):
        unfuse_experts_(model)


def _route_alternately_(model):
    """Layer 0's router sends every token to experts {0, 1} on odd calls and {1, 3} on even ones (weights 1/2): expert
    2 sees no token, expert 3 only from the second batch, after expert 1 in the same forward."""
    router = model.model.layers[0].mlp.gate
    calls = []

    def forward(hidden):
        hidden = hidden.reshape(-1, hidden.shape[-1])
        index = torch.tensor([[0, 1], [1, 3]][len(calls) % 2]).expand(hidden.shape[0], 2)
        calls.append(1)
        return torch.zeros(hidden.shape[0], EXPERTS), torch.full((hidden.shape[0], 2), 0.5), index

    router.forward = forward


def _routed_pair():
    """A split tiny Mixtral routed by ``_route_alternately_``, and an independent copy routed the same way."""
    model, _ = tiny_model("mixtral")
    unfuse_experts_(model)
    _route_alternately_(model)
    reference = copy.deepcopy(model)
    _route_alternately_(reference)
    return model, reference


def _routed_inputs(model, ids) -> dict[str, torch.Tensor]:
    """The inputs each layer-0 expert Linear receives when the dense model runs the windows one by one."""
    seen: dict[str, list] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, []).append(a[0]))
             for n, m in model.model.layers[0].mlp.experts.named_modules() if isinstance(m, nn.Linear)]
    for row in ids:
        _logits(model, row[None])
    for h in hooks:
        h.remove()
    return {n: torch.cat(xs).double() for n, xs in seen.items()}


def _wanda_mask(weight, inputs=None):
    """Keep the larger half of |W|·‖X_j‖₂ in each row (all-ones norms without inputs: magnitude)."""
    norms = torch.ones(weight.shape[1], dtype=torch.float64) if inputs is None else inputs.norm(dim=0)
    score = weight.double().abs() * norms
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(1, score.topk(weight.shape[1] // 2, dim=1).indices, True)
    return keep


def test_each_expert_is_pruned_from_the_tokens_routed_to_it_and_an_unrouted_one_by_magnitude():
    model, reference = _routed_pair()
    ids = _ids()
    inputs = _routed_inputs(reference, ids)
    assert set(inputs) == {f"{e}.{p}" for e in (0, 1, 3) for p in ("gate_proj", "up_proj", "down_proj")}
    with pytest.warns(UserWarning, match="saw no calibration token"):
        report = compress_(model, Recipe(method="wanda", sparsity=parse_sparsity("0.5")), CalibrationSet(ids, ""),
                           batch_size=1, progress=False)
    layer0 = "model.layers.0.mlp.experts"
    assert sorted(report.uncalibrated()) == [f"{layer0}.2.{p}" for p in ("down_proj", "gate_proj", "up_proj")]
    for name, linear in model.model.layers[0].mlp.experts.named_modules():
        if isinstance(linear, nn.Linear):
            dense = reference.get_submodule(f"model.layers.0.mlp.experts.{name}").weight
            want = _wanda_mask(dense, inputs.get(name))
            assert torch.equal(linear.weight != 0, want), name


def _cli(args, capsys):
    from llmprune.cli.main import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


CALIB = ["--calib", "c4", "--nsamples", "4", "--seqlen", "16"]


def test_a_sparsegpt_24_moe_checkpoint_loads_as_it_was_saved(tmp_path, capsys):
    from llmprune.checkpoint import load

    source = save_tiny(tmp_path / "qwen2_moe", "qwen2_moe")
    out = tmp_path / "out"
    code, output = _cli(["compress", source, "--method", "sparsegpt", "--sparsity", "2:4", "--quant", "w4g16",
                         "--format", "sparse24_int4", *CALIB, "-o", out, "--quiet"], capsys)
    assert code == 0, output
    model, _, manifest = load(out)
    experts = [n for n in manifest["layers"] if ".experts." in n]
    assert len(experts) == 2 * EXPERTS * 3 and all(manifest["layers"][n]["format"] == "sparse24_int4"
                                                   for n in experts)
    assert manifest["report"]["skipped"] == {f"model.layers.{i}.mlp.{router}": "MoE router (kept dense)"
                                             for i in range(2) for router in ("shared_expert_gate", "gate.weight")}
    from evals.random_models import dense_twin

    torch.testing.assert_close(_logits(model, _ids()), _logits(dense_twin(model), _ids()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["mixtral", "deepseek_v3"])
def test_a_dense_format_moe_folder_is_a_plain_transformers_checkpoint(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    from llmprune.checkpoint import save

    model, _ = tiny_model(arch)
    compress_(model, Recipe(method="wanda", sparsity=parse_sparsity("0.5")), CalibrationSet(_ids(), ""),
              progress=False)
    save(model, tmp_path / "out")
    assert any(isinstance(m, RoutedExperts) for m in model.modules())  # the model is given back split
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert any(p.ndim == 3 for p in plain.parameters())
    torch.testing.assert_close(_logits(plain, _ids()), _logits(model, _ids()), rtol=0, atol=1e-6)
    experts = [p for n, p in plain.named_parameters() if p.ndim == 3]
    assert all(0.49 < float((p == 0).float().mean()) < 0.51 for p in experts)


def test_fused_experts_puts_the_split_model_back_even_after_an_error():
    model, _ = tiny_model("olmoe")
    unfuse_experts_(model)
    with pytest.raises(RuntimeError), fused_experts(model):
        assert not any(isinstance(m, RoutedExperts) for m in model.modules())
        raise RuntimeError
    assert sum(isinstance(m, RoutedExperts) for m in model.modules()) == 2
    assert not any(p.is_meta for p in model.parameters())


def test_fused_experts_holds_one_copy_of_the_expert_weights():
    """Saving a dense MoE model must not double its expert memory: the experts become views of the fused tensors."""
    model, _ = tiny_model("mixtral")
    unfuse_experts_(model)
    routed = next(m for m in model.modules() if isinstance(m, RoutedExperts))
    before = [x.clone() for e in routed for x in (e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight)]
    want = _logits(model, _ids())
    with fused_experts(model):
        fused = routed.template
        storages = {fused.gate_up_proj.untyped_storage().data_ptr(), fused.down_proj.untyped_storage().data_ptr()}
        for expert in routed:
            for linear in (expert.gate_proj, expert.up_proj, expert.down_proj):
                assert linear.weight.untyped_storage().data_ptr() in storages
    after = [x for e in routed for x in (e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight)]
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    torch.testing.assert_close(_logits(model, _ids()), want, rtol=0, atol=0)


def test_compressed_tensors_export_of_experts_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import llmprune.data.calibration as calibration

    monkeypatch.setattr(calibration, "calibration_windows", lambda *a, **k: pytest.fail("calibration started"))
    source = save_tiny(tmp_path / "mixtral", "mixtral")
    code, output = _cli(["compress", source, "--method", "sparsegpt", "--sparsity", "2:4", "--quant", "w4g16",
                         "--export", "compressed-tensors", *CALIB, "-o", tmp_path / "out"], capsys)
    assert code == 2 or code == 1
    assert "error: --export compressed-tensors: MoE experts cannot be exported" in output
    assert "Traceback" not in output
    assert not (tmp_path / "out").exists()


def test_with_calib_experts_all_every_expert_is_pruned_from_every_token():
    """llm-compressor's calibrate-all-experts mode: each expert's statistics come from all the tokens reaching the
    MoE block (its down_proj from its own activations of them), while the block's output still follows the routing."""
    model, reference = _routed_pair()
    ids = _ids()
    seen = []
    experts = reference.model.layers[0].mlp.experts
    hook = experts.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    for row in ids:
        _logits(reference, row[None])
    hook.remove()
    x = torch.cat(seen).double()
    report = compress_(model, Recipe(method="wanda", sparsity=parse_sparsity("0.5"), experts="all"),
                       CalibrationSet(ids, ""), batch_size=1, progress=False)
    assert report.uncalibrated() == []  # expert 2, never routed, is calibrated too
    pruned = model.model.layers[0].mlp.experts
    assert not pruned.calibrate_all  # switched off after the run
    for e, expert in enumerate(experts):
        gate, up, down = (getattr(expert, p).weight.double() for p in ("gate_proj", "up_proj", "down_proj"))
        hidden = torch.nn.functional.silu(x @ gate.t()) * (x @ up.t())
        for proj, inputs in (("gate_proj", x), ("up_proj", x), ("down_proj", hidden)):
            dense = getattr(expert, proj).weight
            got = getattr(pruned[e], proj).weight != 0
            assert torch.equal(got, _wanda_mask(dense, inputs)), (e, proj)


def test_calibrating_all_experts_leaves_the_block_output_unchanged():
    from llmprune.model.experts import calibrating_all_experts

    model, _ = tiny_model("qwen3_moe")
    unfuse_experts_(model)
    want = _logits(model, _ids())
    with calibrating_all_experts(model):
        torch.testing.assert_close(_logits(model, _ids()), want, rtol=0, atol=1e-6)


def test_calib_experts_must_be_routed_or_all():
    from llmprune.errors import UserInputError

    with pytest.raises(UserInputError, match="--calib-experts 'some': choose routed or all"):
        Recipe(experts="some")


def test_a_batch_recipe_carries_calib_experts_into_the_cell_command():
    from evals.batch import compress_argv
    from evals.spec import recipe_from_dict
    from llmprune.recipe import Calibration

    recipe = {"method": "wanda", "sparsity": "0.5", "experts": "all"}
    assert recipe_from_dict(recipe).experts == "all"
    argv = compress_argv("m", recipe, "out", Calibration())
    assert argv[argv.index("--calib-experts") + 1] == "all"
    assert "--calib-experts" not in compress_argv("m", {"method": "wanda", "sparsity": "0.5"}, "out", Calibration())


def _smollm2_layers(smollm2, n: int):
    """The real SmolLM2-135M cut to its first ``n`` decoder layers (a copy)."""
    model = copy.deepcopy(smollm2.model)
    model.model.layers = model.model.layers[:n]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n]
    return model.eval()


@pytest.mark.parametrize("method, sparsity", [("wanda", "0.5"), ("sparsegpt", "2:4")])
def test_an_upcycled_real_model_pruned_with_all_expert_calibration_is_the_pruned_dense_model(smollm2, method,
                                                                                              sparsity):
    """End to end on real weights: SmolLM2 upcycled into identical experts (top-1, so each token's expert weight is
    exactly 1) computes what SmolLM2 does, and with ``experts="all"`` every expert sees the dense MLP's inputs, so
    every expert of every layer must come out as the pruned dense MLP, bit for bit (SparseGPT's updates included)."""
    from evals.upcycle import upcycle_llama

    dense = _smollm2_layers(smollm2, 2)
    moe = upcycle_llama(dense, experts=2, top_k=1)
    text = "Sparse upcycling copies a dense model's MLP into every expert of a mixture-of-experts block. " * 3
    ids = smollm2.tokenizer(text, return_tensors="pt").input_ids[:, :64].reshape(2, 32)
    torch.testing.assert_close(_logits(moe, ids), _logits(dense, ids), rtol=0, atol=2e-4)
    recipe = Recipe(method=method, sparsity=parse_sparsity(sparsity))
    compress_(dense, recipe, CalibrationSet(ids, ""), progress=False)
    compress_(moe, recipe.with_(experts="all"), CalibrationSet(ids, ""), progress=False)
    for i, layer in enumerate(dense.model.layers):
        assert all(torch.equal(getattr(moe.model.layers[i].self_attn, p).weight, getattr(layer.self_attn, p).weight)
                   for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        for e, expert in enumerate(moe.model.layers[i].mlp.experts):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                assert torch.equal(getattr(expert, proj).weight, getattr(layer.mlp, proj).weight), (i, e, proj)
    torch.testing.assert_close(_logits(moe, ids), _logits(dense, ids), rtol=0, atol=2e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_forward_that_differs_by_one_percent_is_refused_in_16_bit_models_too(monkeypatch, dtype):
    """The split is checked in float32, so a 16-bit model's rounding cannot hide a changed function."""
    model, _ = tiny_model("mixtral")
    model.to(dtype)
    experts = model.model.layers[0].mlp.experts
    original = type(experts).forward.__wrapped__
    monkeypatch.setattr(type(experts).forward, "__wrapped__", lambda self, *a: 1.01 * original(self, *a))
    with pytest.raises(UnsupportedArchitecture, match="not the standard routed-experts computation"):
        unfuse_experts_(model)


def test_a_16_bit_model_splits_and_computes_what_it_did():
    model, _ = tiny_model("qwen2_moe")
    model.to(torch.bfloat16)
    want = _logits(model, _ids())
    unfuse_experts_(model)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    torch.testing.assert_close(_logits(model, _ids()), want, rtol=0.02, atol=0.02)


def test_a_linear_inside_a_router_module_stays_dense():
    """HunYuan-MoE's router is ``mlp.gate`` holding a Linear ``wg``: it is a router too."""
    import transformers as tf

    config = tf.HunYuanMoEV1Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4, moe_topk=2,
                                   num_experts_per_tok=2, moe_intermediate_size=32)
    model = tf.HunYuanMoEV1ForCausalLM(config).eval()
    report = compress_(model, Recipe(method="magnitude", sparsity=parse_sparsity("0.5")), progress=False)
    routers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith("gate.wg")]
    assert routers and all(report.skipped.get(n) == "MoE router (kept dense)" for n in routers)
    assert all(float((model.get_submodule(n).weight == 0).float().mean()) < 0.1 for n in routers)
    assert any(".experts.0.down_proj" in n for n in report.records)


def test_the_library_warns_about_experts_no_token_reached():
    model, _ = tiny_model("mixtral")
    unfuse_experts_(model)
    _route_alternately_(model)
    with pytest.warns(UserWarning, match=r"3 Linear layers \(e.g. model.layers.0.mlp.experts.2.gate_proj\) saw no"):
        compress_(model, Recipe(method="wanda", sparsity=parse_sparsity("0.5")), CalibrationSet(_ids(), ""),
                  batch_size=1, progress=False)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_ignore_may_name_the_routers_kept_dense_anyway(arch):
    """``--ignore 'mlp\\.gate$'`` (llm-compressor's MoE habit) names the routers, which are not Linears in every
    architecture: a pattern matching them is accepted, one matching nothing is refused."""
    from llmprune.compress import build_plan
    from llmprune.errors import UserInputError

    model, _ = tiny_model(arch)
    build_plan(model, Recipe(method="magnitude", sparsity=parse_sparsity("0.5"), ignore=(r"mlp\.gate$",)))
    with pytest.raises(UserInputError, match="matches no layer"):
        build_plan(model, Recipe(method="magnitude", sparsity=parse_sparsity("0.5"), ignore=(r"mlp\.gaet$",)))
