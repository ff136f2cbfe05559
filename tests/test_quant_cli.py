"""``llmprune compress --quant`` end to end on a tiny model, and one-line errors for bad quantization input."""
from __future__ import annotations

import json

import pytest
import torch

from tests.test_cli import CALIB, run_cli, tiny_llama  # noqa: F401  (the CLI helpers and the tiny-model fixture)


@pytest.mark.parametrize("flags, bits", [
    (["--quant", "w4g16"], 4 + 32 / 16),
    (["--quant", "w3g16", "--quantizer", "spqr"], None),
    (["--method", "gqsa", "--sparsity", "0.5", "--quant", "w4g16"], 0.5 * (4 + 48 / 16)),
    (["--method", "sparsegpt", "--sparsity", "2:4", "--quant", "w4g32"], 0.5 * 4 + 1 + 32 / 32),
])
def test_cli_compress_with_quant_records_bits_and_grid_values(flags, bits, tiny_llama, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["compress", tiny_llama, "-o", out, *flags, *CALIB], capsys)
    assert code == 0, stderr
    report = json.loads((out / "llmprune.json").read_text())["report"]
    layers = report["layers"]
    # the model-level figure is the parameter-weighted mean of the per-layer accounting, and the CLI prints it
    weighted = sum(r["bits_per_param"] * r["numel"] for r in layers.values()) / sum(r["numel"] for r in layers.values())
    assert report["bits_per_param"] == pytest.approx(weighted)
    assert f"{weighted:.3f} bits/param" in stdout
    named = stdout.split(" — ")[1].split(": achieved")[0]  # the recipe's steps, no unused method
    assert named == {"w4g16": "w4g16", "spqr": "spqr:w3g16", "gqsa": "gqsa 0.5 w4g16",
                     "sparsegpt": "sparsegpt 2:4 w4g32"}[next(f for f in flags if f in ("w4g16", "spqr", "gqsa",
                                                                                      "sparsegpt"))], stdout
    if "spqr" in flags:
        fraction = sum(r["outlier_fraction"] * r["numel"] for r in layers.values()) / sum(
            r["numel"] for r in layers.values())
        assert report["outlier_fraction"] == pytest.approx(fraction)
    else:
        assert "outlier_fraction" not in report
    model = AutoModelForCausalLM.from_pretrained(out)
    # achieved sparsity counts pruned weights, not quantization codes that happen to dequantize to zero
    target = {"gqsa": 0.5, "sparsegpt": 0.5}.get(next((f for f in flags if f in ("gqsa", "sparsegpt")), None), 0.0)
    assert report["achieved_sparsity"] == pytest.approx(target, abs=1e-9)
    if target == 0.0 and "spqr" not in flags:
        assert any(bool((model.get_submodule(n).weight == 0).any()) for n in layers)  # zero codes do exist
    for name, record in layers.items():
        if bits is not None:
            assert record["bits_per_param"] == pytest.approx(bits)
        else:
            assert record["bits_per_param"] == pytest.approx(3.625 + 32 * record["outlier_fraction"])
        if "spqr" in flags:
            continue
        # every row of every 16-column group takes at most 2**bits distinct values (a uniform grid)
        weight = model.get_submodule(name).weight.detach()
        rows, cols = weight.shape
        groups = weight.reshape(rows, cols // 16, 16)
        distinct = max(len(torch.unique(g)) for g in groups.reshape(-1, 16)[:64])
        assert distinct <= 2 ** int(flags[flags.index("--quant") + 1][1])


@pytest.mark.parametrize("flags, words", [
    (["--quant", "w9"], "bits must be between 2 and 8"),
    (["--quant", "w4g0"], "group size must be at least 1"),
    (["--quant", "w4g1024"], "larger than the input dimension"),
    (["--quant", "w3g48", "--quantizer", "spqr"], "not divisible by the SpQR group size 48"),
    (["--quant", "w3g8s", "--quantizer", "spqr"], "asymmetric"),
    (["--quant", "w3g16", "--quantizer", "spqr", "--option", "stat_group=7"], "stat_group=7"),
    (["--quant", "w3g16", "--quantizer", "spqr", "--option", "stat_bits=0"], "stat_bits=0"),
    (["--quant", "w3g16", "--quantizer", "spqr", "--option", "stat_bits=2.5"], "stat_bits=2.5: spqr needs a whole"),
    (["--quant", "w3g16", "--quantizer", "spqr", "--option", "spqr_damp=x"], "spqr_damp=x: spqr needs a number"),
    (["--quant", "w3g16", "--quantizer", "spqr", "--option", "act_order=maybe"], "act_order=maybe: write true or"),
    (["--quant", "w4g16", "--quantizer", "gtpq"], "did you mean 'gptq'"),
    # every step's options are read as their parameter's default reads, before calibration
    (["--quant", "w4g16", "--option", "act_order=maybe"], "act_order=maybe: write true or false"),
    (["--sparsity", "0.5", "--refine", "dsnot", "--option", "monotone_nm=maybe"], "monotone_nm=maybe: write true or"),
    (["--sparsity", "0.5", "--refine", "dsnot", "--option", "max_cycles=abc"], "max_cycles=abc: dsnot needs a whole"),
    (["--sparsity", "0.5", "--refine", "dsnot", "--option", "max_cycles=2.5"], "needs a whole number"),
    (["--sparsity", "0.5", "--refine", "dsnot", "--option", "dsnot_skip_mlp=sure"], "dsnot_skip_mlp=sure: write"),
    (["--sparsity", "0.5", "--quant", "w3g16", "--quantizer", "spqr"], "takes no sparsity"),  # before calibration
    # compressed-tensors refusals, before calibration too (they came after the whole compression)
    (["--sparsity", "0.5", "--quant", "w4g48", "--export", "compressed-tensors"], "group 48 does not divide 64"),
    (["--quant", "w3g16", "--quantizer", "spqr", "--export", "compressed-tensors"], "SpQR's outliers"),
    (["--sparsity", "0.5", "--export", "compressed-tensors"], "needs quantized layers"),
])
def test_cli_bad_quant_is_one_line_and_writes_nothing(flags, words, tiny_llama, tmp_path, capsys, monkeypatch):
    import llmprune.data.calibration as calibration

    # every refusal comes before calibration (the compute it would waste on a large model)
    monkeypatch.setattr(calibration, "calibration_windows", lambda *a, **k: pytest.fail("calibration started"))
    out = tmp_path / "out"
    code, _, stderr = run_cli(["compress", tiny_llama, "-o", out, "--nsamples", "2", "--seqlen", "16", "--quiet",
                               *flags], capsys)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], stderr
    assert not out.exists() and not list(tmp_path.glob(".*out*"))


@pytest.mark.parametrize("quantizer", ["rtn", "gptq"])
def test_every_format_of_one_float32_run_holds_the_same_weights(quantizer, tiny_llama, tmp_path, capsys):
    """int4 stores float16 scales: the quantizer fits them as stored, so --format dense (float32 weights) of the
    same recipe is the very model the int4 checkpoint holds, not one 1e-4 away."""
    from llmprune import checkpoint

    flags = ["--quant", "w4g16", "--quantizer", quantizer, *CALIB]
    assert run_cli(["compress", tiny_llama, "-o", tmp_path / "int4", "--format", "int4", *flags], capsys)[0] == 0
    assert run_cli(["compress", tiny_llama, "-o", tmp_path / "dense", *flags], capsys)[0] == 0
    packed, _, manifest = checkpoint.load(tmp_path / "int4")
    dense, _, _ = checkpoint.load(tmp_path / "dense")
    for name in manifest["layers"]:
        assert packed.get_submodule(name).scales.dtype == torch.float16
        assert torch.equal(packed.get_submodule(name).dequantize(), dense.get_submodule(name).weight)


def test_cli_export_and_a_failed_forced_rerun_keeps_both_previous_outputs(tiny_llama, tmp_path, capsys,
                                                                          monkeypatch):
    from llmprune import checkpoint

    out = tmp_path / "q4"
    flags = ["compress", tiny_llama, "-o", out, "--quant", "w4g16", "--quantizer", "rtn", "--format", "int4",
             "--export", "compressed-tensors", "--quiet"]
    assert run_cli(flags, capsys)[0] == 0
    export = tmp_path / "q4.compressed-tensors"
    manifest = json.loads((out / "llmprune.json").read_text())
    assert manifest["export"]["path"] == str(export.absolute()) and (export / "config.json").is_file()
    before = {p: p.read_bytes() for p in [*out.iterdir(), *export.iterdir()] if p.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "write_checkpoint", disk_full)
    with pytest.raises(OSError, match="disk full"):
        run_cli([*flags, "--force"], capsys)
    after = {p: p.read_bytes() for p in [*out.iterdir(), *export.iterdir()] if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["q4", "q4.compressed-tensors"]


def test_spqr_settings_given_with_option_are_the_ones_checked_and_used(tmp_path, capsys):
    """`--option stat_group=8` on a model whose MLP width (104) 16 does not divide: the checks before calibration
    read the option, as the quantizer does, and the checkpoint stores second-level groups of 8 rows."""
    import transformers as tf

    from tests.tiny_models import tiny_tokenizer

    config = tf.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=104, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    tf.LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    args = ["compress", tmp_path / "m", "--quant", "w3g8", "--quantizer", "spqr", "--format", "spqr", *CALIB]
    code, _, stderr = run_cli([*args, "-o", tmp_path / "default"], capsys)
    assert code == 2 and "stat_group=16 must divide the output dimension 104" in stderr, stderr
    code, _, stderr = run_cli([*args, "-o", tmp_path / "out", "--option", "stat_group=8"], capsys)
    assert code == 0, stderr
    layers = json.loads((tmp_path / "out" / "llmprune.json").read_text())["layers"]
    assert {record["params"]["stat_group"] for record in layers.values()} == {8}


def test_forced_rerun_without_export_removes_the_replaced_export(tiny_llama, tmp_path, capsys):
    """The old export would sit beside an output it no longer matches (and be served as if it did)."""
    out = tmp_path / "q4"
    assert run_cli(["compress", tiny_llama, "-o", out, "--quant", "w4g16s", "--quantizer", "rtn", "--export",
                    "compressed-tensors", "--quiet"], capsys)[0] == 0
    assert (tmp_path / "q4.compressed-tensors" / "config.json").is_file()
    with pytest.warns(UserWarning, match="removed .*q4.compressed-tensors, the export of the output this --force"):
        assert run_cli(["compress", tiny_llama, "-o", out, "--method", "magnitude", "--sparsity", "0.5", "--force",
                        "--quiet"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q4"]
    (tmp_path / "q4.compressed-tensors").mkdir()  # a folder of that name llmprune did not write stays
    assert run_cli(["compress", tiny_llama, "-o", out, "--method", "magnitude", "--sparsity", "0.5", "--force",
                    "--quiet"], capsys)[0] == 0
    assert (tmp_path / "q4.compressed-tensors").is_dir()
