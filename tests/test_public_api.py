"""The top-level API (``llmprune.__all__``) survives its own use: importing a submodule sets an attribute of the same
name on the package, which would shadow a public function named like it (``llmprune.formats()`` once did, after its
first call imported ``llmprune.formats``)."""
from __future__ import annotations

import importlib
import pkgutil

import llmprune


def test_public_names_are_not_shadowed_by_submodules():
    public = {name: getattr(llmprune, name) for name in llmprune.__all__}
    for info in pkgutil.iter_modules(llmprune.__path__):
        if info.name != "__main__":  # runs the CLI
            importlib.import_module(f"llmprune.{info.name}")
    shadowed = [name for name, obj in public.items() if getattr(llmprune, name) is not obj]
    assert not shadowed
    assert llmprune.format_names() == llmprune.format_names() and "sparse24_int4" in llmprune.format_names()
    assert {"magnitude", "wanda", "sparsegpt"} <= set(llmprune.method_names())


def test_compress_without_calibration_says_how_from_python_too():
    """The library caller has no --calib flag: the message also shows the call that gives the windows."""
    import pytest

    from llmprune import Recipe, compress_, parse_sparsity
    from llmprune.errors import UserInputError
    from tests.tiny_models import tiny_model

    model, _ = tiny_model("llama")
    with pytest.raises(UserInputError, match=r"give --calib \(from Python: .*calibration_windows"):
        compress_(model, Recipe(method="wanda", sparsity=parse_sparsity("0.5")))


def _windows(n=2, seqlen=16, high=200, seed=0):
    import torch

    from llmprune.data.calibration import CalibrationSet, windows_sha256

    ids = torch.randint(1, high, (n, seqlen), generator=torch.Generator().manual_seed(seed))
    return CalibrationSet(ids, windows_sha256(ids))


def test_compress_refuses_what_it_could_not_really_change_before_any_weight_changes():
    """Offloaded weights (on meta) and weights recomputed by torch.nn.utils.prune: one line, model untouched."""
    import pytest
    import torch
    from torch.nn.utils import prune

    from llmprune import Recipe, compress_, parse_sparsity
    from llmprune.errors import UserInputError
    from tests.tiny_models import tiny_model

    recipe = Recipe(method="magnitude", sparsity=parse_sparsity("0.5"))
    model, _ = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.model.layers[1].mlp.down_proj.to("meta")  # what accelerate's disk offload leaves in the module
    with pytest.raises(UserInputError, match=r"^model\.layers\.1\.mlp\.down_proj\.weight is offloaded \(on the meta"):
        compress_(model, recipe)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if v.device.type != "meta")
    model, _ = tiny_model("llama")
    prune.l1_unstructured(model.model.layers[0].self_attn.q_proj, "weight", 0.3)
    with pytest.raises(UserInputError, match=r"q_proj recomputes its weight at every forward .*prune\.remove"):
        compress_(model, recipe)


def test_compress_checks_its_python_arguments_in_one_line():
    import pytest

    from llmprune import NM, Groups, Recipe, Unstructured, compress_, parse_sparsity
    from llmprune.errors import UserInputError
    from tests.tiny_models import tiny_model

    model, _ = tiny_model("llama")
    recipe = Recipe(method="wanda", sparsity=parse_sparsity("0.5"))
    vocab = model.config.vocab_size
    cases = [
        (lambda: compress_(model, recipe, _windows().ids), "give a CalibrationSet"),
        (lambda: compress_(model, recipe, _windows(high=vocab + 50, seed=1)), "beyond the model's vocabulary"),
        (lambda: compress_(model, recipe, _windows(seqlen=10_000)), "the calibration windows' length 10000: the mo"),
        (lambda: compress_(model, recipe, _windows(), batch_size=0), "batch_size=0: must be a whole number"),
        (lambda: compress_(model, recipe, _windows(), device="tpu"), "--device tpu: choose cpu or cuda"),
        (lambda: compress_(model, Recipe(method="wanda"), _windows()), "nothing to do: the recipe has no sparsity"),
        (lambda: Recipe(sparsity="0.5"), "give Unstructured, NM or Groups"),
        (lambda: Recipe(quant="w4g32"), "give a QuantSpec"),
        (lambda: NM(4, 2), "1 <= N < M"), (lambda: Unstructured(1.5), "a number in (0, 1)"),
        (lambda: Unstructured(0.0), "a number in (0, 1)"), (lambda: Groups(0, 0.5), "group size must be"),
    ]
    for call, words in cases:
        with pytest.raises(UserInputError) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value), (words, info.value)


def test_compress_runs_in_eval_mode_and_through_a_compile_wrapper():
    """Dropout off during calibration (train() mode gave other masks), the mode restored; a torch.compile wrapper
    is compressed under the model's own names."""
    import torch

    from llmprune import Recipe, compress_, parse_sparsity
    from tests.tiny_models import tiny_model

    recipe = Recipe(method="wanda", sparsity=parse_sparsity("0.5"))
    plain, _ = tiny_model("opt")
    trained, _ = tiny_model("opt")
    for m in trained.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.3
    trained.train()
    compress_(plain, recipe, _windows(), progress=False)
    compress_(trained, recipe, _windows(), progress=False)
    assert trained.training and all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                                          trained.state_dict().values()))
    wrapped, _ = tiny_model("llama")
    report = compress_(torch.compile(wrapped), recipe, _windows(), progress=False)
    assert "model.layers.0.mlp.down_proj" in report.records
    assert float((wrapped.model.layers[0].mlp.down_proj.weight == 0).float().mean()) == 0.5


def test_save_packs_a_compressed_model_from_python(tmp_path):
    """save(report=, format=) writes what `llmprune compress --format` writes: the packed layers, the report and
    recipe in the manifest; loading gives the logits of the compressed model."""
    import pytest
    import torch

    import llmprune
    from llmprune import Recipe, compress_, parse_quant, parse_sparsity
    from llmprune.errors import UserInputError
    from llmprune.packed_linear import PackedLinear
    from tests.tiny_models import tiny_model, tiny_tokenizer

    model, _ = tiny_model("llama")
    recipe = Recipe(method="sparsegpt", sparsity=parse_sparsity("2:4"), quant=parse_quant("w4g16s"))
    report = compress_(model, recipe, _windows(), progress=False)
    with pytest.raises(UserInputError, match="pass report="):
        llmprune.save(model, tmp_path / "no", format="sparse24_int4")
    folder = llmprune.save(model, tmp_path / "packed", report=report, format="sparse24_int4", recipe=recipe,
                           tokenizer=tiny_tokenizer())
    loaded, _, manifest = llmprune.load(folder)
    assert sum(isinstance(m, PackedLinear) for m in loaded.modules()) == len(report.records)
    assert manifest["recipe"]["sparsity"] == "2:4" and set(manifest["report"]["layers"]) == set(report.records)
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-4)
