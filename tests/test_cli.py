"""End-to-end CLI runs on tiny models, and the one-line errors for bad input (nothing written)."""
from __future__ import annotations

import json

import pytest
import torch

from llmprune.cli.main import main
from tests.tiny_models import ARCHS, save_tiny


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama")


CALIB = ["--calib", "c4", "--nsamples", "4", "--seqlen", "32", "--quiet"]


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_compress_every_architecture_end_to_end(arch, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    src = save_tiny(tmp_path / "src", arch)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["compress", src, "--method", "wanda", "--sparsity", "2:4", "-o", out, *CALIB],
                                   capsys)
    assert code == 0, stderr
    manifest = json.loads((out / "llmprune.json").read_text())
    layers = manifest["report"]["layers"]
    assert layers and all(record["sparsity"] == 0.5 for record in layers.values())
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, record in layers.items():
        weight = model.get_submodule(name).weight
        assert int((weight == 0).sum()) >= weight.numel() // 2
    assert manifest["calibration"]["sha256"] and manifest["recipe"]["sparsity"] == "2:4"
    assert "wanda" in (out / "README.md").read_text()  # every output folder carries its model card


@pytest.mark.parametrize("method, sparsity", [("magnitude", "0.5"), ("sparsegpt", "0.5"), ("sparsegpt", "4:8")])
def test_cli_compress_methods(method, sparsity, tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = run_cli(["compress", tiny_llama, "--method", method, "--sparsity", sparsity, "-o", out, *CALIB],
                              capsys)
    assert code == 0, stderr
    manifest = json.loads((out / "llmprune.json").read_text())
    assert abs(manifest["report"]["achieved_sparsity"] - 0.5) < 1e-9
    if method == "magnitude":
        assert manifest["calibration"] is None  # no calibration pass when no method needs data


def test_cli_from_manifest_reproduces_the_weights(tiny_llama, tmp_path, capsys, monkeypatch, recwarn):
    """The model card's rerun command (no MODEL) from another working directory than the first run's, which gave
    the model by a relative path."""
    from safetensors.torch import load_file

    first, second, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tiny_llama.parent)
    assert run_cli(["compress", tiny_llama.name, "--method", "sparsegpt", "--sparsity", "2:4", "-o", first,
                    *CALIB], capsys)[0] == 0
    monkeypatch.chdir(elsewhere)
    code, _, stderr = run_cli(["compress", "--from-manifest", first / "llmprune.json", "--output", second,
                               "--quiet"], capsys)
    assert code == 0, stderr
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    manifest = json.loads((second / "llmprune.json").read_text())
    assert manifest["model"]["path"] == str(tiny_llama.resolve()) and manifest["recipe"]["sparsity"] == "2:4"
    assert not [w for w in recwarn if "calibration windows differ" in str(w.message)]


def test_cli_from_manifest_runs_the_recipe_on_another_model(tiny_llama, tmp_path, capsys):
    other = save_tiny(tmp_path / "other", "qwen2")
    first, second = tmp_path / "a", tmp_path / "b"
    assert run_cli(["compress", tiny_llama, "--method", "wanda", "--sparsity", "0.5", "-o", first, *CALIB],
                   capsys)[0] == 0
    code, _, stderr = run_cli(["compress", other, "--from-manifest", first, "-o", second, "--quiet"], capsys)
    assert code == 0, stderr
    manifest = json.loads((second / "llmprune.json").read_text())
    assert manifest["model"]["path"] == str(other.resolve()) and manifest["recipe"]["method"] == "wanda"
    assert manifest["command"][-5:] == [str(other), "--from-manifest", str(first / "llmprune.json"), "--output",
                                        str(second)]  # the card's reproduce line runs as written


@pytest.mark.parametrize("args, words", [
    (["--sparsity", "0.7"], "--sparsity: --from-manifest re-runs the recorded recipe; drop --sparsity"),
    (["--nsamples", "8"], "drop --nsamples"),
])
def test_cli_from_manifest_refuses_recipe_flags(args, words, tmp_path, capsys):
    code, _, stderr = run_cli(["compress", "--from-manifest", tmp_path / "llmprune.json", "-o", tmp_path / "o",
                               *args], capsys)
    assert code == 2 and words in stderr and len(stderr.splitlines()) == 1, stderr


def test_cli_compress_without_model_or_manifest(tmp_path, capsys):
    code, _, stderr = run_cli(["compress", "-o", tmp_path / "o", "--sparsity", "0.5"], capsys)
    assert code == 2 and "give MODEL" in stderr and len(stderr.splitlines()) == 1, stderr


@pytest.mark.parametrize("flags, words", [
    (["--sparsity", "3:2"], "N must be smaller than M"),
    (["--sparsity", "1.5"], "fraction in (0, 1)"),
    (["--sparsity", "abc"], "not a number"),
    (["--sparsity", "0:4"], "at least 1"),
    (["--sparsity", "3:7"], "not divisible by M=7"),
    (["--sparsity", "0.5", "--method", "wnada"], "did you mean 'wanda'"),
    (["--sparsity", "0.5", "--calib", "no_such_corpus.jsonl"], "no_such_corpus"),
    (["--sparsity", "0.5", "--ignore", "["], "--ignore '[': not a regular expression"),
    (["--sparsity", "0.5", "--override", "[=0.3"], "--override '[': not a regular expression"),
    (["--sparsity", "0.5", "--override", "mlp=0.3@g16"], "group sparsity needs --method gqsa"),
    (["--sparsity", "0.5", "--override", "mlp=abc"], "--override mlp=abc: not a number"),
    (["--sparsity", "0.5", "--ignore", "mpl"], "--ignore 'mpl': matches no layer of this model"),
    (["--sparsity", "0.5", "--override", "down_prj=0.3"], "--override 'down_prj': matches no layer"),
    (["--sparsity", "0.5", "--method", "sparsegpt", "--damp", "inf"], "--damp inf: must be a positive finite"),
    (["--sparsity", "0.5", "--option", "max_cycle=5"], "--option max_cycle: not an option of this recipe"),
    (["--sparsity", "0.5", "--refine", "dsnot", "--option", "max_cycle=5"], "choose one of dsnot_skip_mlp, max_cycles"),
    (["--sparsity", "0.5", "--option", "damp=0.1"], "--option damp: set it with --damp"),
    (["--sparsity", "0.5", "--option", "scale_dtype=x"], "--option scale_dtype: not an option of this recipe"),
    (["--sparsity", "0.5", "--batch-size", "0"], "--batch-size 0: must be"),
    (["--sparsity", "0.5", "--device", "foo"], "--device foo: choose cpu or cuda"),
    (["--sparsity", "0.5", "--seqlen", "100000"], "--seqlen 100000: the model takes at most"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(flags, words, tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["compress", tiny_llama, "-o", out, "--nsamples", "2", "--seqlen", "16",
                                    "--quiet", *flags], capsys)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".*out*")), "temp dir left behind"


@pytest.mark.parametrize("flags, words", [
    (["--seqlen", "100000"], "--seqlen 100000: the model takes at most"),
    (["--calib", "missing.jsonl"], "data file 'missing.jsonl' not found"),
    (["--calib", "c5"], "--calib c5: unknown source"),
    (["--nsamples", "100000000"], "--nsamples 100000000 x --seqlen 16: the calibration hidden states need 393.4 GiB "
                                  "(1600000000 tokens x 64 x float32)"),
])
def test_cli_data_mistakes_are_found_before_the_model_loads(flags, words, tiny_llama, tmp_path, capsys, monkeypatch):
    """A 7B checkpoint takes minutes to load: a wrong window length or calibration source is found from the config
    and the data alone."""
    import llmprune.model

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the data checks")

    monkeypatch.setattr(llmprune.model, "resolve", no_loading)
    out = tmp_path / "out"
    code, _, stderr = run_cli(["compress", tiny_llama, "-o", out, "--sparsity", "0.5", "--nsamples", "2",
                               "--seqlen", "16", "--quiet", *flags], capsys)
    assert code == 2 and stderr.startswith("error: ") and words in stderr and len(stderr.splitlines()) == 1, stderr
    assert not out.exists()


def test_cli_format_shape_rule_is_checked_before_calibration(tiny_llama, tmp_path, capsys, monkeypatch):
    """Not after minutes of calibration and compression, at pack time."""
    import llmprune.data.calibration

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated before the format's shape check")

    monkeypatch.setattr(llmprune.data.calibration, "calibration_windows", no_calibration)
    code, _, stderr = run_cli(["compress", tiny_llama, "-o", tmp_path / "out", "--sparsity", "0.5", "--method",
                               "sparsegpt", "--quant", "w4g48", "--quantizer", "rtn", "--format", "int4", *CALIB],
                              capsys)
    assert code == 2 and "group size 48 does not divide in_features 64" in stderr and len(stderr.splitlines()) == 1


def test_cli_unknown_model_path(tmp_path, capsys):
    code, _, stderr = run_cli(["compress", tmp_path / "nope", "-o", tmp_path / "out", "--sparsity", "0.5"], capsys)
    assert code == 2 and stderr.startswith("error: ") and "does not exist" in stderr and len(stderr.splitlines()) == 1


def test_cli_missing_dataset_names_the_data_dir(tiny_llama, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLMPRUNE_DATA_DIR", str(tmp_path / "empty"))
    code, _, stderr = run_cli(["compress", tiny_llama, "-o", tmp_path / "out", "--sparsity", "0.5", *CALIB], capsys)
    assert code == 2 and "LLMPRUNE_DATA_DIR" in stderr and len(stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_non_empty_output_without_force(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["compress", tiny_llama, "-o", out, "--method", "magnitude", "--sparsity", "0.5", "--quiet"]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "--force" in stderr and len(stderr.splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    assert run_cli([*args, "--force"], capsys)[0] == 0
    assert (out / "llmprune.json").exists() and not (out / "keep.txt").exists()


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_cli_lm_head_only_when_asked_and_untied(method, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    src = save_tiny(tmp_path / "src", "gemma2")  # Gemma ties lm_head to the embeddings
    plain, with_head = tmp_path / "plain", tmp_path / "head"
    base = ["compress", src, "--method", method, "--sparsity", "0.5", *CALIB]
    assert run_cli([*base, "-o", plain], capsys)[0] == 0
    assert run_cli([*base, "-o", with_head, "--include-lm-head"], capsys)[0] == 0
    original = AutoModelForCausalLM.from_pretrained(src)
    untouched = AutoModelForCausalLM.from_pretrained(plain)
    assert torch.equal(untouched.lm_head.weight, original.lm_head.weight)
    pruned = AutoModelForCausalLM.from_pretrained(with_head)
    head = pruned.lm_head.weight
    assert int((head == 0).sum()) >= head.numel() // 2  # (the padding row of the embedding is zero already)
    assert torch.equal(pruned.get_input_embeddings().weight, original.get_input_embeddings().weight)
    assert json.loads((with_head / "llmprune.json").read_text())["report"]["layers"]["lm_head"]["sparsity"] == 0.5


def _manifest_run(tiny_llama, tmp_path, capsys, calib_file):
    first = tmp_path / "a"
    assert run_cli(["compress", tiny_llama, "--method", "wanda", "--sparsity", "0.5", "-o", first, "--calib",
                    calib_file, "--nsamples", "2", "--seqlen", "16", "--quiet"], capsys)[0] == 0
    return first / "llmprune.json"


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["job"].pop("format"), "not a valid llmprune manifest (KeyError: 'format')"),
    (lambda d: d["recipe"].update(damp="x"), "--damp 'x': must be a positive finite number"),
    (lambda d: d["recipe"].update(block=0), "--block 0: must be a positive number"),
    (lambda d: d["job"].update(batch_size=0), "--batch-size 0: must be a whole number >= 1"),
    (lambda d: d["calibration"].update(nsamples="2"), "--nsamples '2': must be a whole number >= 1"),
    (lambda d: d["job"].update(dtype="int8"), "llmprune.json records --dtype int8: choose one of"),
    (lambda d: d.update(format_version=99), "format_version 99 is not 1"),
    (lambda d: d.update(format_version="1"), "format_version '1' is not 1"),
    (lambda d: d["model"].update(kind="weird"), "model.kind 'weird' is none of folder, gguf, alias, hub"),
    (lambda d: d["calibration"].pop("sha256"), "(KeyError: 'sha256')"),
    (lambda d: d.update(calibration=None), "the recorded run read no calibration data, but its recipe needs it"),
    (lambda d: d["recipe"].update(ignore=["["]), "--ignore '[': not a regular expression"),
])
def test_cli_from_manifest_checks_an_edited_manifest(edit, words, tiny_llama, tmp_path, capsys):
    from tests.tiny_models import _SENTENCES

    text = tmp_path / "calib.txt"
    text.write_text(" ".join(_SENTENCES * 4))
    path = _manifest_run(tiny_llama, tmp_path, capsys, text)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    code, _, stderr = run_cli(["compress", "--from-manifest", path, "-o", tmp_path / "b", "--quiet"], capsys)
    assert code == 2 and words in stderr and len(stderr.splitlines()) == 1, stderr
    assert not (tmp_path / "b").exists()


def test_cli_from_manifest_refuses_changed_calibration_data_unless_allowed(tiny_llama, tmp_path, capsys, monkeypatch):
    from tests.tiny_models import _SENTENCES

    text = tmp_path / "calib.txt"
    text.write_text(" ".join(_SENTENCES * 4))
    path = _manifest_run(tiny_llama, tmp_path, capsys, text)
    assert json.loads(path.read_text())["model"]["files"]["model.safetensors"]  # recorded by the first run
    text.write_text(" ".join(reversed(_SENTENCES * 4)))
    code, _, stderr = run_cli(["compress", "--from-manifest", path, "-o", tmp_path / "b", "--quiet"], capsys)
    assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert "the calibration windows" in stderr and "pass --allow-changed-inputs to run anyway" in stderr
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".*b*"))
    monkeypatch.chdir(tmp_path)  # given relative, recorded resolved: the record is read from other folders
    with pytest.warns(UserWarning, match="the calibration windows .* differ from the recorded run's"):
        assert run_cli(["compress", "--from-manifest", path.relative_to(tmp_path), "-o", tmp_path / "b",
                        "--allow-changed-inputs", "--quiet"], capsys)[0] == 0
    replay = json.loads((tmp_path / "b" / "llmprune.json").read_text())["replay"]
    assert replay["manifest"] == str(path) and len(replay["changed"]) == 1
    assert replay["changed"][0].startswith("the calibration windows")


def test_cli_from_manifest_warns_when_the_versions_differ(tiny_llama, tmp_path, capsys):
    first = tmp_path / "a"
    assert run_cli(["compress", tiny_llama, "--method", "magnitude", "--sparsity", "0.5", "-o", first, "--quiet"],
                   capsys)[0] == 0
    data = json.loads((first / "llmprune.json").read_text())
    data["versions"]["torch"] = "1.0.0"
    (first / "llmprune.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"other versions \(torch 1.0.0 -> "):
        assert run_cli(["compress", "--from-manifest", first, "-o", tmp_path / "b", "--quiet"], capsys)[0] == 0


def test_cli_from_manifest_refuses_a_changed_model(tiny_llama, tmp_path, capsys):
    """The manifest records the sha256 of the model's files: a folder re-saved with other weights is another model
    (magnitude pruning reads no calibration data, so nothing else would notice)."""
    import shutil

    model = shutil.copytree(tiny_llama, tmp_path / "model")
    first = tmp_path / "a"
    assert run_cli(["compress", model, "--method", "magnitude", "--sparsity", "0.5", "-o", first, "--quiet"],
                   capsys)[0] == 0
    assert run_cli(["compress", "--from-manifest", first, "-o", tmp_path / "same", "--quiet"], capsys)[0] == 0
    assert json.loads((tmp_path / "same" / "llmprune.json").read_text())["replay"]["changed"] == []
    save_tiny(model, "llama", seed=1)
    capsys.readouterr()  # save_pretrained's own progress bar
    code, _, stderr = run_cli(["compress", "--from-manifest", first, "-o", tmp_path / "b", "--quiet"], capsys)
    assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert "the model files model.safetensors differ from the recorded run's" in stderr
    assert not (tmp_path / "b").exists()


def test_cli_from_manifest_reads_a_calibration_file_by_its_recorded_path(tiny_llama, tmp_path, capsys, monkeypatch):
    """``--calib calib.txt`` given relative to the first run's directory: the re-run from another directory reads
    that file, not another one of the same name."""
    from safetensors.torch import load_file

    from tests.tiny_models import _SENTENCES

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    (here / "calib.txt").write_text(" ".join(_SENTENCES * 4))
    (elsewhere / "calib.txt").write_text(" ".join(reversed(_SENTENCES * 4)))
    monkeypatch.chdir(here)
    path = _manifest_run(tiny_llama, tmp_path, capsys, "calib.txt")
    monkeypatch.chdir(elsewhere)
    code, _, stderr = run_cli(["compress", "--from-manifest", path, "-o", tmp_path / "b", "--quiet"], capsys)
    assert code == 0, stderr
    a, b = load_file(path.parent / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_allow_changed_inputs_needs_from_manifest(tiny_llama, tmp_path, capsys):
    code, _, stderr = run_cli(["compress", tiny_llama, "--sparsity", "0.5", "-o", tmp_path / "o",
                               "--allow-changed-inputs"], capsys)
    assert code == 2 and "--allow-changed-inputs applies to --from-manifest re-runs only" in stderr


def test_cli_shows_its_own_warnings_as_one_line():
    """While the CLI runs, a warning raised in llmprune's code is formatted as ``warning: ...`` (not a file:line and
    a code line); a library's warning keeps Python's format; the format is restored afterwards."""
    import warnings

    import llmprune.cli.main as cli_main
    from llmprune import pipeline

    seen = []
    original = cli_main.app
    cli_main.app = lambda args, standalone_mode: seen.append(warnings.formatwarning) or 0
    try:
        assert cli_main.main(["compress"]) == 0
    finally:
        cli_main.app = original
    fmt = seen[0]
    assert fmt("the calibration windows differ", UserWarning, pipeline.__file__, 12) == \
        "warning: the calibration windows differ\n"
    assert "DeprecationWarning: old" in fmt("old", DeprecationWarning, warnings.__file__, 3)
    assert warnings.formatwarning is not fmt


@pytest.mark.parametrize("args, words", [
    (["compress", "m", "-o", "x", "--nsample", "8"], "no such option: --nsample"),
    (["compress", "m"], "missing option '--output'"),
    (["compresss"], "no such command 'compresss'. Did you mean 'compress'?"),
    (["compress", "m", "-o", "x", "--nsamples", "abc"], "invalid value for '--nsamples'"),
    (["batch", "spec.yaml", "--dry-run"], "no such option: --dry-run"),
    (["eval", "dir", "--batch-size", "many"], "invalid value for '--batch-size'"),
    (["compress", "m", "-o", "x", "--sparsity"], "requires an argument. (see 'llmprune compress --help')"),
])
def test_cli_usage_mistakes_are_one_line(args, words, capsys):
    """Click's usage errors (a three-line Usage/Try/Error block) come out as one ``error:`` line, exit code 2."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err
    assert "--help')" in err


def test_cli_version_and_bare_commands(capsys):
    """``--version`` answers before a command is asked for; a bare command prints its help, no empty error line."""
    from llmprune import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == __version__
    for args in ([], ["compress"], ["eval"]):
        assert main(args) == 2
        captured = capsys.readouterr()
        assert "Usage" in captured.out + captured.err and "error:" not in captured.err, captured.err


@pytest.mark.parametrize("flags, words", [
    (["--sparsity", "0.5", "--format", "sparse24"], "--format sparse24 stores at most 2 of every 4 weights"),
    (["--sparsity", "4:8", "--quant", "w4g16", "--format", "sparse24_int4"], "the sparsity here is 4:8"),
    (["--sparsity", "2:4", "--override", "mlp=0.3", "--format", "sparse24"], "--override mlp: --format sparse24"),
    (["--sparsity", "2:4", "--format", "int4"], "--format int4 stores quantized weights"),
    (["--quant", "w4g16", "--format", "spqr"], "which only the spqr quantizer makes; add --quantizer spqr"),
    (["--quant", "w3g16", "--quantizer", "spqr", "--format", "int4"], "--format int4 cannot hold SpQR's"),
    (["--sparsity", "2:4", "--format", "sparse24", "--spill-to-disk"], "--spill-to-disk is for dense outputs"),
    (["--method", "wanda", "--sparsity", "0.5", "--refine", "dsnot", "--option", "max_cycles=-5"],
     "--option max_cycles=-5: DSnoT needs a count >= 0"),
    (["--method", "wanda", "--sparsity", "0.5", "--refine", "dsnot", "--option", "update_threshold=nan"],
     "--option update_threshold=nan: dsnot needs a number here"),
    (["--method", "wanda", "--sparsity", "0.5", "--refine", "dsnot", "--option", "pow_of_var_growing=inf"],
     "--option pow_of_var_growing=inf: DSnoT needs a finite number >= 0"),
])
def test_cli_format_demands_are_checked_before_the_model_loads(flags, words, tmp_path, capsys):
    """The model does not exist: the recipe-vs-format error must come first, i.e. before any loading."""
    code, _, stderr = run_cli(["compress", tmp_path / "no-model", "-o", tmp_path / "out", *flags], capsys)
    assert code == 2 and words in stderr and len(stderr.splitlines()) == 1, stderr


def test_cli_ignore_may_name_layers_kept_dense_anyway(tiny_llama, tmp_path, capsys):
    """``--ignore lm_head`` (llm-compressor's habit) names a real Linear that is not compressed by default: it is
    accepted, not taken for a typo; so is an MoE router (tests/test_moe.py)."""
    code, _, stderr = run_cli(["compress", tiny_llama, "-o", tmp_path / "o", "--method", "magnitude", "--sparsity",
                               "0.5", "--ignore", "lm_head", "--quiet"], capsys)
    assert code == 0, stderr


def test_packed_input_names_its_origin_by_the_resolved_path(tiny_llama, tmp_path, capsys, monkeypatch):
    """The origin a packed folder's refusal names is usable from anywhere, not the spec as typed in its run."""
    import shutil

    shutil.copytree(tiny_llama, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    assert run_cli(["compress", "base", "-o", "packed", "--quant", "w4g32", "--quantizer", "rtn", "--format", "int4",
                    "--quiet"], capsys)[0] == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, stderr = run_cli(["compress", "../packed", "-o", "out", "--sparsity", "0.5", "--quiet"], capsys)
    assert code == 2 and f"compress the model it was made from ('{tmp_path / 'base'}')" in stderr, stderr


def test_compressing_an_llmprune_output_records_the_run_that_made_it(tiny_llama, tmp_path, capsys):
    first, second = tmp_path / "pruned", tmp_path / "quantized"
    assert run_cli(["compress", tiny_llama, "-o", first, "--method", "wanda", "--sparsity", "2:4", *CALIB],
                   capsys)[0] == 0
    assert run_cli(["compress", first, "-o", second, "--quant", "w4g32", "--quantizer", "rtn", "--quiet"],
                   capsys)[0] == 0
    before = json.loads((first / "llmprune.json").read_text())
    parent = json.loads((second / "llmprune.json").read_text())["model"]["parent"]
    assert parent["recipe"] == before["recipe"] and parent["achieved_sparsity"] == 0.5
    assert parent["model"]["path"] == before["model"]["path"] and "files" not in parent["model"]
    assert parent["calibration"] == {k: before["calibration"][k] for k in ("source", "nsamples", "seqlen", "seed")}
    assert "made by an earlier llmprune run" in (second / "README.md").read_text()


def test_cli_spill_to_disk_writes_the_same_checkpoint_and_records_itself(tiny_llama, tmp_path, capsys):
    """Disk-backed weights change where the run keeps them, not what it writes; the replay carries the flag over."""
    outputs = {}
    for flags in ([], ["--spill-to-disk"]):
        out = tmp_path / f"out{len(flags)}"
        code, _, stderr = run_cli(["compress", tiny_llama, "--method", "sparsegpt", "--sparsity", "2:4", "-o", out,
                                   *CALIB, *flags], capsys)
        assert code == 0, stderr
        outputs[bool(flags)] = out
    assert (outputs[True] / "model.safetensors").read_bytes() == (outputs[False] / "model.safetensors").read_bytes()
    manifest = json.loads((outputs[True] / "llmprune.json").read_text())
    assert manifest["job"]["spill_to_disk"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out0", "out1"]  # no spill file beside the outputs
    again = tmp_path / "again"
    code, _, stderr = run_cli(["compress", "--from-manifest", outputs[True] / "llmprune.json", "-o", again,
                               "--spill-to-disk", "--quiet"], capsys)
    assert code == 0, stderr
    assert (again / "model.safetensors").read_bytes() == (outputs[False] / "model.safetensors").read_bytes()
    assert "--spill-to-disk" in json.loads((again / "llmprune.json").read_text())["command"]


def test_cli_spill_to_disk_warns_when_the_dtype_converts_the_checkpoint(tiny_llama, tmp_path, capsys, recwarn):
    """A float32 checkpoint loaded as bfloat16 is copied into RAM whole, which spilling cannot help."""
    for dtype, warned in (("bfloat16", True), ("float32", False)):
        recwarn.clear()
        code, _, stderr = run_cli(["compress", tiny_llama, "--method", "magnitude", "--sparsity", "2:4", "-o",
                                   tmp_path / dtype, "--dtype", dtype, "--spill-to-disk", "--quiet"], capsys)
        assert code == 0, stderr
        said = [str(w.message) for w in recwarn if "--spill-to-disk" in str(w.message)]
        assert said == (["--spill-to-disk: the checkpoint holds float32 weights and --dtype bfloat16 converts every "
                         "one of them into RAM; give --dtype float32 to keep them mapped from the file"]
                        if warned else []), said
