"""``llmprune bench`` (evals/bench.py, cli/bench.py): packed decode is exact vs the dequantized dense twin, the
table/JSON rows, one-line errors, and the 7B shapes built on the meta device only; and the command-line contract of
``benchmarks/kernels.py`` on a machine without a GPU (bad names, exit status)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import typer
from typer.testing import CliRunner

from llmprune.errors import UserInputError
from llmprune.evals import bench, random_models
from llmprune.packed_linear import PackedLinear
from tests.scripts import load_benchmark

PACKED = [f for f in bench.FORMATS if f != "dense"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("fmt", PACKED)
def test_packed_greedy_tokens_equal_dense_twin(fmt):
    model = random_models.build_random("tiny", fmt, "cpu", "float32", seed=1)
    twin = random_models.dense_twin(model)
    assert sum(isinstance(m, PackedLinear) for m in model.modules()) == 14
    assert not any(isinstance(m, PackedLinear) for m in twin.modules())
    for batch in (1, 2):
        prompt = torch.randint(0, 256, (batch, 5), generator=torch.Generator().manual_seed(batch))
        got, want = bench.greedy(model, prompt, 6), bench.greedy(twin, prompt, 6)
        assert got.shape == (batch, 6)
        assert torch.equal(got, want)
        with torch.no_grad():  # tokens alone barely see small-weight layers; the logits do
            torch.testing.assert_close(model(prompt).logits, twin(prompt).logits, rtol=1e-5, atol=1e-6)


def test_random_patterns_are_the_formats_patterns():
    """The dequantized random weights have the sparsity each format promises (direct count on the dense twin)."""
    gate = {f: random_models.dense_twin(random_models.build_random("tiny", f, "cpu", "float32")).model.layers[0].mlp.up_proj.weight
            for f in ("sparse24", "sparse24_int4", "group_sparse_int4", "int4")}
    for f in ("sparse24", "sparse24_int4"):
        assert ((gate[f].reshape(-1, 4) != 0).sum(-1) <= 2).all()
    assert (gate["group_sparse_int4"] == 0).float().mean() >= 0.5  # half the groups of each row
    assert (gate["int4"] != 0).float().mean() > 0.8


def test_no_meta_tensors_left_after_build():
    model = random_models.build_random("tiny", "spqr", "cpu", "float16")
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert model.model.embed_tokens.weight.dtype == torch.float16


def _llama_params(h, inter, layers, heads, kv, vocab):
    """Direct count: untied embedding + lm_head, q/k/v/o, gate/up/down, two norms per layer, final norm."""
    kv_dim = h // heads * kv
    per_layer = h * h * 2 + h * kv_dim * 2 + 3 * h * inter + 2 * h
    return 2 * vocab * h + layers * per_layer + h


@pytest.mark.parametrize("shape,published", [("llama-7b", 6_738_415_616), ("llama3-8b", 8_030_261_248)])
def test_big_shapes_on_meta_only(shape, published):
    model = random_models.meta_model(shape)
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    count = sum(p.numel() for p in params)
    cfg = random_models.SHAPES[shape]
    assert count == published == _llama_params(cfg["hidden_size"], cfg["intermediate_size"],
                                                cfg["num_hidden_layers"], cfg["num_attention_heads"],
                                                cfg["num_key_value_heads"], cfg["vocab_size"])


def test_run_bench_rows_and_table():
    result = bench.run_bench("tiny", PACKED, [1, 2], new_tokens=3, prompt_len=4, device="cpu", dtype="float32",
                             runs=1)
    rows = result["rows"]
    assert [(r["format"], r["batch"]) for r in rows] == [(f, b) for f in ["dense"] + PACKED for b in (1, 2)]
    assert all(r["variant"] == "eager" for r in rows)
    assert all(r["speedup"] == 1.0 or r["speedup"] != r["speedup"] for r in rows if r["format"] == "dense")
    assert all(r["paths"] == {"reference": 14} for r in rows if r["format"] != "dense")
    assert result["representative"] is False
    table = bench.format_table(result)
    assert "NOT representative" in table
    assert f"transformers {transformers.__version__}" in table.splitlines()[0]
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(rows)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(model="llama-99b"), "unknown model or shape"),
    (dict(formats=["int3"]), "unknown --format"),
    (dict(batches=[0]), "--batch"),
    (dict(dtype="float8"), "--dtype"),
    (dict(variants=["static+cudagraphs"]), "--cuda-graphs needs --device cuda"),
    (dict(device="mps"), "--device mps: choose cpu or cuda"),
])
def test_bad_input_one_line(kwargs, needle):
    args = dict(model="tiny", formats=["int4"], batches=[1], device="cpu", dtype="float32", variants=["eager"])
    args.update(kwargs)
    with pytest.raises(UserInputError, match="^[^\n]*$") as info:
        bench.check_inputs(**args)
    assert needle in str(info.value)


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(UserInputError, match=f"--device {device} but CUDA is not available"):
            bench.check_inputs("tiny", ["int4"], [1], device, "float16", ["eager"])


def test_a_gpu_other_than_the_first_is_named_as_compress_and_eval_name_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    bench.check_inputs("tiny", ["int4"], [1], "cuda:1", "float16", ["eager"])  # accepted (it was refused)
    with pytest.raises(UserInputError, match="this machine has 2 GPU"):
        bench.check_inputs("tiny", ["int4"], [1], "cuda:2", "float16", ["eager"])


def _app():
    from llmprune.cli.bench import bench_command

    app = typer.Typer()
    app.command()(bench_command)
    return app


def test_cli_json():
    res = CliRunner().invoke(_app(), ["tiny", "--format", "int4,sparse24_int4", "--batch", "1", "--new-tokens", "3",
                                      "--prompt-len", "2", "--device", "cpu", "--dtype", "float32", "--runs", "1",
                                      "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # the JSON on stdout; the progress bar on stderr
    assert "bench:" in res.stderr and "/3 " in res.stderr and "sparse24_int4 batch 1 eager" in res.stderr
    assert [r["format"] for r in out["rows"]] == ["dense", "int4", "sparse24_int4"]
    assert out["device"] == "cpu" and out["new_tokens"] == 3


def test_cli_bad_batch(capsys):
    from llmprune.cli.main import main

    code = main(["bench", "tiny", "--batch", "1,x", "--device", "cpu"])  # through the real `llmprune` entry point
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --batch") and len(err.splitlines()) == 1


def test_semi_structured_variant_is_sparse24_with_its_layers_opted_in(monkeypatch):
    """``sparse24+semi`` measures sparse24 layers told to use the semi-structured weight (on CPU they take the
    reference matmul, so only the plumbing is checked: the rows, and every layer's option)."""
    built = []
    real = bench._build

    def spy(*args):
        built.append(real(*args))
        return built[-1]

    monkeypatch.setattr(bench, "_build", spy)
    result = bench.run_bench("tiny", [bench.SEMI], [1], new_tokens=3, prompt_len=4, device="cpu", dtype="float32",
                             runs=1)
    assert [r["format"] for r in result["rows"]] == ["dense", bench.SEMI]
    layers = [m for m in built[-1].modules() if isinstance(m, PackedLinear)]
    assert len(layers) == 14 and all(m.format == "sparse24" for m in layers)
    assert all(m.kernel_options == {"semi_structured": True} for m in layers)


def test_bench_of_a_checkpoint_compares_it_with_its_own_weights_unpacked(tmp_path):
    """A saved int4 model against the same weights as plain Linears: same greedy tokens, the rows labelled by the
    stored format; another --format is refused (it used to be ignored, and the rows labelled with it)."""
    from llmprune import checkpoint
    from tests.packed_fixtures import pack_model_
    from tests.tiny_models import tiny_model

    model, _ = tiny_model("llama")
    saved = checkpoint.save(model, tmp_path / "int4", layers=pack_model_(model, "int4"))
    with pytest.raises(UserInputError, match=r"measured as stored \(int4.*give --format int4"):
        bench.run_bench(str(saved), ["sparse24_int4"], [1], new_tokens=3, prompt_len=4, device="cpu",
                        dtype="float32", runs=1)
    dense = bench._build(str(saved), "dense", "cpu", "float32", 0)
    packed = bench._build(str(saved), "int4", "cpu", "float32", 0)
    assert not any(isinstance(m, PackedLinear) for m in dense.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == 7 * model.config.num_hidden_layers
    prompt = torch.tensor([[1, 5, 9, 2]])
    assert torch.equal(bench.greedy(dense, prompt, 4), bench.greedy(packed, prompt, 4))
    result = bench.run_bench(str(saved), ["int4"], [1], new_tokens=3, prompt_len=4, device="cpu", dtype="float32",
                             runs=1)
    assert [r["format"] for r in result["rows"]] == ["dense", "int4"]


def test_bench_of_a_gpt2_folder_reads_conv1d_shapes_and_biases(tmp_path):
    """GPT-2's Conv1D stores its weight [in, out]: the random layers take the [out, in] shape and the bias (the
    bench crashed with a shape mismatch); prompt + new tokens beyond its 128 positions are one line."""
    from tests.tiny_models import save_tiny

    folder = save_tiny(tmp_path / "gpt2", "gpt2")
    result = bench.run_bench(str(folder), ["int4"], [1], new_tokens=3, prompt_len=4, device="cpu", dtype="float32",
                             runs=1)
    assert [r["format"] for r in result["rows"]] == ["dense", "int4"] and result["rows"][1]["agree"] is not False
    packed = bench._build(str(folder), "int4", "cpu", "float32", 0)
    attn = packed.transformer.h[0].attn.c_attn
    assert isinstance(attn, PackedLinear) and attn.bias is not None and attn.out_features == 3 * attn.in_features
    with pytest.raises(UserInputError, match=r"^--prompt-len 126 \+ --new-tokens 3: the model takes at most 128"):
        bench.run_bench(str(folder), ["int4"], [1], new_tokens=3, prompt_len=126, device="cpu", dtype="float32",
                        runs=1)


def test_cli_bench_of_a_checkpoint_defaults_to_its_stored_format(tmp_path):
    """Without --format a checkpoint is measured as stored (the default sparse24_int4 used to be refused for it)."""
    from llmprune import checkpoint
    from tests.packed_fixtures import pack_model_
    from tests.tiny_models import tiny_model

    model, _ = tiny_model("llama")
    saved = checkpoint.save(model, tmp_path / "int4", layers=pack_model_(model, "int4"))
    res = CliRunner().invoke(_app(), [str(saved), "--batch", "1", "--new-tokens", "2", "--prompt-len", "2",
                                      "--device", "cpu", "--dtype", "float32", "--runs", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert [r["format"] for r in json.loads(res.stdout)["rows"]] == ["dense", "int4"]


def test_cli_compile_at_the_smallest_new_tokens(monkeypatch):
    """--compile --new-tokens 2 (the smallest the CLI takes) used to fail: the static cache was sized for the timed
    decode only, and the 2-step warm-up writes one token more (tracing backend "eager": no C++ toolchain needed)."""
    monkeypatch.setattr(bench, "COMPILE_BACKEND", "eager")
    res = CliRunner().invoke(_app(), ["tiny", "--format", "int4", "--batch", "1", "--new-tokens", "2",
                                      "--prompt-len", "4", "--device", "cpu", "--dtype", "float32", "--runs", "1",
                                      "--compile", "--json"])
    assert res.exit_code == 0, res.output
    rows = [r for r in json.loads(res.stdout)["rows"] if r["variant"] == "static+compile"]
    assert [r["format"] for r in rows] == ["dense", "int4"]
    assert all(r["error"] is None and r["agree"] == 1.0 and r["tokens_per_s"] > 0 for r in rows)


KERNELS_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


@pytest.fixture(scope="module")
def kernels_script():
    return load_benchmark("kernels", "bench_kernels_cli")


@pytest.mark.parametrize("argv,needle", [
    (["--plan", "--formats", "dense"], "--formats 'dense': unknown 'dense'; choose from int4,sparse24,"),
    (["--check", "--formats", "int4,bogus"], "--formats 'int4,bogus': unknown 'bogus'"),
    (["--bench", "--dtypes", "float32"], "--dtypes 'float32': unknown 'float32'; choose from float16,bfloat16"),
    (["--check", "--dtypes", ","], "--dtypes ',': nothing given"),
])
def test_kernels_script_unknown_name_is_one_line_error(kernels_script, capsys, argv, needle):
    assert kernels_script.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv,what", [
    ([], "checked or measured"), (["--check"], "checked;"), (["--bench", "--quick"], "measured;"),
    (["--bench", "--install"], "measured or installed"), (["--precompile"], "checked, measured or precompiled"),
])
def test_kernels_script_without_cuda_fails_saying_nothing_ran(kernels_script, monkeypatch, capsys, tmp_path, argv,
                                                              what):
    """A CI step `kernels.py --check && ...` must not pass on a machine where nothing was checked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernels_script.main([*argv, "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no CUDA GPU visible, so nothing was ") and what in err
    assert len(err.splitlines()) == 1 and not any(tmp_path.iterdir())


def test_kernels_script_plan_runs_without_cuda(kernels_script, monkeypatch, capsys):
    """--plan only counts (kernel_plan.py, stubbed here: it imports the Triton kernels), so it exits 0 on CPU."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(kernels_script, "plan_rows", lambda formats, *rest: asked.append(formats) or ["| row |"])
    assert kernels_script.main(["--plan", "--formats", "int4, spqr", "--dtypes", "bfloat16"]) == 0
    assert asked == [["int4", "spqr"]] and "| row |" in capsys.readouterr().out


def test_kernels_script_exit_status_as_a_shell_sees_it():
    """The script itself, GPU hidden: a bad name exits 2 without a traceback, --check exits 1."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}

    def run(*argv):
        return subprocess.run([sys.executable, str(KERNELS_SCRIPT), *argv], capture_output=True, text=True,
                              timeout=120, env=env, check=False)

    bad = run("--plan", "--formats", "dense")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.startswith("error: --formats")
    nothing = run("--check", "--formats", "int4")
    assert nothing.returncode == 1 and "no CUDA GPU visible" in nothing.stderr


@pytest.mark.parametrize("quiet", [True, False])
def test_cli_quiet_hides_the_loading_bars_too(quiet, tmp_path):
    from tests.tiny_models import save_tiny

    folder = save_tiny(tmp_path / "m", "llama")
    res = CliRunner().invoke(_app(), [str(folder), "--format", "int4", "--batch", "1", "--new-tokens", "2",
                                      "--prompt-len", "2", "--device", "cpu", "--dtype", "float32", "--runs", "1",
                                      "--json", *(["--quiet"] if quiet else [])])
    assert res.exit_code == 0, res.output
    assert ("Loading weights" in res.output) != quiet
