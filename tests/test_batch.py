"""``llmprune batch``: resume, failing cells, content-hash reuse, shards, the report (table with relative changes,
plots), and one real end-to-end run on a tiny model checked against a direct perplexity computation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llmprune.errors import UserInputError
from llmprune.evals.batch import BatchRunner, run_batch
from llmprune.evals.plots import write_report
from llmprune.evals.spec import load_spec

SPEC = """\
models: [fake-model]
recipes:
  - {method: magnitude, sparsity: [0.5, 0.75]}
  - {method: wanda, sparsity: "2:4"}
evaluations:
  perplexity: [wikitext2]
  zeroshot: [arc_easy]
"""
DENSE_PPL, DENSE_ACC = 10.0, 0.5


class Fakes:
    """Stand-ins for compress/load/evaluate whose metrics are simple functions of the target sparsity."""

    def __init__(self, fail: str | None = None, interrupt: bool = False):
        self.compressed, self.evaluated, self.fail, self.interrupt, self.current = [], [], fail, interrupt, None

    def compress(self, model, recipe, out_dir, *, calibration, device, dtype):
        self.compressed.append(recipe["sparsity"])
        if recipe["sparsity"] == self.fail:
            raise UserInputError(f"boom at {self.fail}")
        out_dir.mkdir(parents=True)
        fraction = 0.5 if ":" in recipe["sparsity"] else float(recipe["sparsity"])
        manifest = {"report": {"achieved_sparsity": fraction}, "layers": {"l": {"out_features": 4, "in_features": 8}},
                    "tensors": {"l.weight": {"shape": [4, 8], "dtype": "float16"}}}
        (out_dir / "llmprune.json").write_text(json.dumps(manifest))

    def load(self, model, model_dir, *, device, dtype):
        manifest = None if model_dir is None else json.loads((model_dir / "llmprune.json").read_text())
        self.current = 0.0 if manifest is None else manifest["report"]["achieved_sparsity"]
        return "model", "tokenizer", manifest

    def evaluate(self, model, tokenizer, evals, *, device, on_stage=None):
        sparsity = self.current
        self.evaluated.append(sparsity)
        if self.interrupt and len(self.evaluated) == 3:
            raise KeyboardInterrupt
        return {"ppl:wikitext2": DENSE_PPL * (1 + sparsity), "acc:arc_easy": DENSE_ACC * (1 - sparsity / 2),
                "mean_acc": DENSE_ACC * (1 - sparsity / 2)}, []


def _runner(tmp_path, fakes: Fakes, text: str = SPEC) -> BatchRunner:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(text)
    return BatchRunner(load_spec(spec_path), tmp_path / "out", compress=fakes.compress, load=fakes.load,
                       evaluate=fakes.evaluate)


def test_batch_resume_skips_finished_cells(tmp_path):
    first = Fakes(interrupt=True)  # Ctrl-C during the third evaluation
    with pytest.raises(KeyboardInterrupt):
        _runner(tmp_path, first).run()
    assert first.evaluated == [0.0, 0.5, 0.75]  # dense and magnitude 0.5 finished before the interruption
    second = Fakes()
    results = _runner(tmp_path, second).run()
    assert second.compressed == ["2:4"] and second.evaluated == [0.75, 0.5]  # 0.75 was compressed already
    third = Fakes()
    again = _runner(tmp_path, third).run()
    assert third.compressed == [] and third.evaluated == [] and again == results
    assert [r.label for r in results] == ["dense", "magnitude 0.5", "magnitude 0.75", "wanda 2:4"]


def test_batch_failing_cell_is_recorded_and_the_run_continues(tmp_path):
    fakes = Fakes(fail="0.75")
    runner = _runner(tmp_path, fakes)
    results = runner.run()
    assert [r.status for r in results] == ["ok", "ok", "error", "ok"]
    assert results[2].error == "UserInputError: boom at 0.75" and results[2].metrics == {}
    assert results[2].model_dir is None and Path(results[1].model_dir).is_dir()  # no folder for a failed compression
    paths = write_report(results, tmp_path / "out")
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[2])["error"] == "UserInputError: boom at 0.75"
    assert "| magnitude 0.75 | FAILED: UserInputError: boom at 0.75 |" in paths[1].read_text()
    retry = Fakes()
    _runner(tmp_path, retry).run()
    assert retry.compressed == ["0.75"] and retry.evaluated == [0.75]  # only the failed cell runs again


def test_batch_table_dense_first_with_relative_changes(tmp_path):
    results = _runner(tmp_path, Fakes()).run()
    table = write_report(results, tmp_path / "out")[1].read_text().splitlines()
    start = table.index("| variant | sparsity | bits | ppl:wikitext2 | acc:arc_easy | mean_acc |")
    rows = table[start + 2:start + 6]
    assert rows[0] == "| dense | 0.000 | 32.000 | 10.00 | 0.500 | 0.500 |"
    # ppl 10 -> 15 is +50%; acc 0.5 -> 0.375 is -25%; float16 storage is 16 bits per parameter.
    assert rows[1] == "| magnitude 0.5 | 0.500 | 16.000 | 15.00 (+50.0%) | 0.375 (-25.0%) | 0.375 (-25.0%) |"
    assert rows[2] == "| magnitude 0.75 | 0.750 | 16.000 | 17.50 (+75.0%) | 0.312 (-37.5%) | 0.312 (-37.5%) |"
    assert rows[3].startswith("| wanda 2:4 | 0.500 |")


QUANT_SPEC = """\
models: [fake-model]
recipes:
  - {method: wanda, quant: w4g16, quantizer: rtn}
  - {method: sparsegpt, sparsity: "2:4", quant: w4g16}
evaluations:
  perplexity: [wikitext2]
dense: false
"""


class QuantFakes(Fakes):
    """Writes a fake-quant (float32 ``dense``) checkpoint whose report carries the quantizer's bits/parameter."""

    qbits = 4.0

    def compress(self, model, recipe, out_dir, *, calibration, device, dtype):
        self.compressed.append(recipe.get("sparsity"))
        out_dir.mkdir(parents=True)
        manifest = {"report": {"achieved_sparsity": 0.0, "bits_per_param": self.qbits},
                    "layers": {"l": {"out_features": 4, "in_features": 8}},
                    "tensors": {"l.weight": {"shape": [4, 8], "dtype": "float32"}}}
        (out_dir / "llmprune.json").write_text(json.dumps(manifest))


def test_batch_quant_rows_name_the_quantizer_and_report_quantized_bits(tmp_path):
    results = _runner(tmp_path, QuantFakes(), QUANT_SPEC).run()
    assert [r.label for r in results] == ["w4g16 rtn", "sparsegpt 2:4 w4g16"]
    table = write_report(results, tmp_path / "out")[1].read_text().splitlines()
    assert "| variant | sparsity | bits | qbits | ppl:wikitext2 | acc:arc_easy | mean_acc |" in table
    assert "| w4g16 rtn | 0.000 | 32.000 | 4.000 | 10.00 | 0.500 | 0.500 |" in table
    # a cached result re-reads its size metrics from the cached checkpoint (a newer accounting needs no rerun)
    for manifest in (tmp_path / "out" / "cache" / "models").glob("*/llmprune.json"):
        data = json.loads(manifest.read_text())
        data["report"]["bits_per_param"] = 3.5
        manifest.write_text(json.dumps(data))
    fakes = QuantFakes()
    again = _runner(tmp_path, fakes, QUANT_SPEC).run()
    assert fakes.compressed == [] and fakes.evaluated == []
    assert [r.metrics["qbits"] for r in again] == [3.5, 3.5]


def test_batch_plots_are_pngs_named_per_model(tmp_path):
    results = _runner(tmp_path, Fakes()).run()
    written = write_report(results, tmp_path / "out")
    pngs = sorted(p.name for p in written if p.suffix == ".png")
    assert pngs == ["fake-model-acc-vs-bits.png", "fake-model-ppl-vs-sparsity-wikitext2.png"]
    for path in written[2:]:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (900, 576)  # 7.5 x 4.8 inches at 120 dpi


def test_batch_changed_evaluations_reuse_compressed_models(tmp_path):
    _runner(tmp_path, Fakes()).run()
    fakes = Fakes()
    _runner(tmp_path, fakes, SPEC + "  seqlen: 256\n").run()
    assert fakes.compressed == [] and fakes.evaluated == [0.0, 0.5, 0.75, 0.5]


def test_batch_shards_partition_the_cells(tmp_path):
    a, b = Fakes(), Fakes()
    first = _runner(tmp_path, a).run(shard=(0, 2))
    second = _runner(tmp_path, b).run(shard=(1, 2))
    assert [r.label for r in first] == ["dense", "magnitude 0.75"]
    assert [r.label for r in second] == ["magnitude 0.5", "wanda 2:4"]
    final = Fakes()
    assert len(_runner(tmp_path, final).run()) == 4 and final.evaluated == []


BAD_SPECS = [
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5, refine: dsnot, options: {max_cycles: -1}}\n"
     "evaluations: {perplexity: [wikitext2]}\n",
     r"spec.yaml:3: recipes\[0\].options: --option max_cycles=-1: DSnoT needs a count >= 0"),
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 2:4}\nevaluations: {perplexity: [wikitext2]}\n",
     r'spec.yaml:3: recipes\[0\].sparsity: YAML reads 2:4 as the base-60 number 124; quote it: "2:4"'),
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5}\nevaluations: {perplexity: [wikitext2]}\n"
     "evaluations: {perplexity: [c4]}\n", r"spec.yaml:5: evaluations: given twice \(first on line 4\); keep one"),
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5}\nevaluations: {perplexity: [wikitext2]\n",
     r"spec.yaml:5: invalid YAML \(expected ',' or '}', but got '<stream end>' while parsing a flow mapping that "
     r"starts on line 4\); fix the syntax"),
    ("models: [m]\nrecipes:\n  - method: wanda\n    sparsity: 0.5\n  - method: wanda\n    sparsity: '3:2'\n"
     "evaluations: {perplexity: [wikitext2]}\n",
     r"spec.yaml:6: recipes\[1\].sparsity: --sparsity 3:2: N must be smaller than M"),
    ("models: [m]\nrecipes:\n  - {method: wnada, sparsity: 0.5}\nevaluations: {perplexity: [wikitext2]}\n",
     r"spec.yaml:3: recipes\[0\].method: unknown method 'wnada'; did you mean 'wanda'\?"),
    ("models: [m]\nrecipe:\n  - {method: wanda, sparsity: 0.5}\nevaluations: {perplexity: [wikitext2]}\n",
     r"spec.yaml:2: recipe: unknown key; did you mean 'recipes'\?"),
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5}\nevaluations:\n  zeroshot: [arc_easy]\n"
     "  limit: -1\n", r"spec.yaml:6: evaluations.limit: a positive number"),
    ("recipes:\n  - {method: wanda, sparsity: 0.5}\nevaluations: {perplexity: [wikitext2]}\n",
     r"spec.yaml:1: models: give a name or a non-empty list"),
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5, format: sparse42}\n"
     "evaluations: {perplexity: [wikitext2]}\n", r"spec.yaml:3: recipes\[0\].format: unknown format 'sparse42'"),
    # the Recipe's own checks, at load time rather than when the cell runs
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5, damp: x}\nevaluations: {perplexity: [wikitext2]}\n",
     r"spec.yaml:3: recipes\[0\]: --damp 'x': must be a positive finite number"),
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5, ignore: ['[']}\n"
     "evaluations: {perplexity: [wikitext2]}\n", r"spec.yaml:3: recipes\[0\]: --ignore '\[': not a regular expression"),
    ("models: [m]\nrecipes:\n  - {method: magnitude, sparsity: 0.5, format: sparse24}\n"
     "evaluations: {perplexity: [wikitext2]}\n",
     r"spec.yaml:3: recipes\[0\].format: the recipe: --format sparse24 stores at most 2 of every 4 weights"),
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: [0.5, '2:4'], format: [dense, sparse24]}\n"
     "evaluations: {perplexity: [wikitext2]}\n",
     r"spec.yaml:3: recipes\[0\].format: .* \(in the grid's combination sparsity: 0.5, format: sparse24; a grid "
     r"runs every combination, so write the ones that fit as separate recipes\)$"),
    # no combination can run: the error is the recipe's, not the grid's
    ("models: [m]\nrecipes:\n  - {method: bogus, sparsity: [0.5, 0.6]}\nevaluations: {perplexity: [wikitext2]}\n",
     r"recipes\[0\].method: unknown method 'bogus'[^(]*$"),
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5}\nevaluations: {perplexity: [wikitext2]}\n"
     "dtype: int8\n", r"spec.yaml:5: dtype: 'int8': choose float32, float16 or bfloat16"),
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5}\nevaluations: {perplexity: [wikitext2]}\n"
     "device: tpu\n", r"spec.yaml:5: device: 'tpu': choose cpu or cuda"),
    ("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5, options: [a]}\n"
     "evaluations: {perplexity: [wikitext2]}\n", r"spec.yaml:3: recipes\[0\].options: a mapping"),
]


@pytest.mark.parametrize("text, message", BAD_SPECS)
def test_batch_spec_errors_name_line_and_key(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=message) as info:
        load_spec(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("formats, fails", [("[dense]", False), ("[dense, sparse24]", True)])
def test_batch_spec_grid_validates_each_combination_once(tmp_path, monkeypatch, formats, fails):
    """A failing combination asks whether any other one runs: from the outcomes already known, not by checking the
    combinations again."""
    from llmprune.evals import spec as spec_module

    checked = []
    validate = spec_module._validate_recipe

    def counting(recipe, where, key):
        checked.append((str(recipe["sparsity"]), recipe.get("format")))
        return validate(recipe, where, key)

    monkeypatch.setattr(spec_module, "_validate_recipe", counting)
    path = tmp_path / "spec.yaml"
    path.write_text(f"models: [m]\nrecipes:\n  - {{method: wanda, sparsity: [0.5, '2:4'], format: {formats}}}\n"
                    "evaluations: {perplexity: [wikitext2]}\n")
    if fails:
        with pytest.raises(UserInputError, match="in the grid's combination sparsity: 0.5, format: sparse24"):
            load_spec(path)
    else:
        assert [v.label for v in load_spec(path).variants] == ["wanda 0.5", "wanda 2:4"]
    assert len(checked) == len(set(checked)) == (4 if fails else 2)


def _direct_ppl(folder: Path, text: str, seqlen: int, max_windows: int) -> tuple[float, float]:
    """Perplexity by the papers' protocol over the first ``max_windows`` windows, computed by hand from the plain HF
    folder; and its zero fraction."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt").input_ids[0]
    assert ids.numel() // seqlen > max_windows  # the cap must bite for the test to mean anything
    windows = max_windows
    chunks = ids[: windows * seqlen].view(windows, seqlen)
    with torch.no_grad():
        logp = torch.log_softmax(model(chunks).logits[:, :-1].double(), -1)
    nll = -float(logp.gather(2, chunks[:, 1:, None]).sum())
    weights = [m.weight for n, m in model.named_modules() if ".layers." in n and isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    return math.exp(nll / (windows * (seqlen - 1))), zeros


def _tiny_spec(tmp_path, recipes: str, max_windows: int) -> tuple[Path, Path, Path]:
    """(spec, model folder, text file) of a one-model batch on a tiny Llama, scored on a local text."""
    from tests.tiny_models import _SENTENCES, save_tiny

    folder = save_tiny(tmp_path / "tiny", "llama")
    text_file = tmp_path / "text.txt"
    text_file.write_text(" ".join(_SENTENCES * 3))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"models: [{folder}]\nrecipes:\n{recipes}evaluations:\n  perplexity: [{text_file}]\n"
                    f"  seqlen: 32\n  max_windows: {max_windows}\n")
    return spec, folder, text_file


def test_batch_cli_end_to_end_tiny_model(tmp_path, capsys):
    from llmprune.cli.main import main

    spec, folder, text_file = _tiny_spec(tmp_path, "  - {method: magnitude, sparsity: 0.5}\n", 2)
    assert main(["batch", str(spec), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["label"], r["status"]) for r in rows] == [("dense", "ok"), ("magnitude 0.5", "ok")]
    text = text_file.read_text()
    for row, directory in ((rows[0], folder), (rows[1], Path(rows[1]["model_dir"]))):
        ppl, zeros = _direct_ppl(directory, text, 32, 2)
        assert row["metrics"][f"ppl:{text_file}"] == pytest.approx(ppl, rel=1e-4)
        assert row["metrics"]["sparsity"] == pytest.approx(zeros, abs=1e-6)
    assert (Path(rows[1]["model_dir"]) / "README.md").is_file()  # every compressed cell gets its model card
    # and its results, as `llmprune eval` records them: `llmprune push` of the cached folder publishes them
    recorded = json.loads((Path(rows[1]["model_dir"]) / "llmprune.json").read_text())["evaluations"]
    from transformers import AutoTokenizer

    windows = AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt").input_ids.numel() // 32
    import hashlib

    sha = hashlib.sha256(text_file.read_bytes()).hexdigest()[:12]
    note = f"seqlen 32, first 2 of {windows} windows, file sha256 {sha}"
    assert [(r["name"], r["metric"], r["note"], r["partial"]) for r in recorded] == [("text.txt", "ppl", note, True)]
    assert recorded[0]["value"] == pytest.approx(rows[1]["metrics"][f"ppl:{text_file}"])
    assert note in (Path(rows[1]["model_dir"]) / "README.md").read_text()
    assert "2 cells ok, 0 failed" in capsys.readouterr().out
    assert (tmp_path / "out" / "plots").is_dir()
    assert "perplexity: seqlen 32, first 2 windows" in (tmp_path / "out" / "results.md").read_text()


def test_batch_cli_exits_1_when_a_cell_failed(tmp_path, capsys):
    """Scripts and CI read the exit code: failed cells are a failure even though the run goes on."""
    from llmprune.cli.main import main

    # groups of 48 do not divide the tiny model's 64 inputs: only the model tells, so the cell fails when it runs
    spec, _, _ = _tiny_spec(tmp_path, "  - {method: magnitude, sparsity: 0.5, quant: w4g48, quantizer: rtn, "
                                      "format: int4}\ndense: false\n", 1)
    assert main(["batch", str(spec), "-o", str(tmp_path / "out"), "--quiet"]) == 1
    assert "0 cells ok, 1 failed" in capsys.readouterr().out


@pytest.mark.parametrize("line, words", [
    ("calibration: {source: missing.txt}\n", "calibration.source: "),
    ("evaluations: {perplexity: [wikitxet2]}\n", "evaluations.perplexity: --ppl wikitxet2: unknown dataset"),
])
def test_batch_cli_checks_data_names_before_the_first_cell(line, words, tmp_path, capsys):
    from llmprune.cli.main import main

    spec = tmp_path / "spec.yaml"
    spec.write_text("models: [never-loaded]\nrecipes:\n  - {method: wanda, sparsity: 0.5}\n" + line
                    + ("" if "evaluations" in line else "evaluations: {perplexity: [wikitext2]}\n"))
    assert main(["batch", str(spec), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {spec}: ") and words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_cli_interrupt_is_exit_130_with_one_line(monkeypatch, capsys):
    from llmprune import pipeline
    from llmprune.cli.main import main

    def interrupted(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_compress", interrupted)
    assert main(["compress", "m", "-o", "out", "--sparsity", "0.5", "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_batch_spec_ignore_written_bare_is_one_pattern(tmp_path):
    from llmprune.evals.spec import recipe_from_dict

    assert recipe_from_dict({"method": "wanda", "sparsity": "0.5", "ignore": "mlp"}).ignore == ("mlp",)


def test_batch_cell_command_carries_ignore_and_options_back_to_the_same_recipe(tmp_path, monkeypatch):
    """The command a cell records (manifest, model card) holds every --ignore pattern and --option, quoted for the
    shell; the compress CLI's own parser reads it back to the recipe the cell ran."""
    import shlex

    from llmprune import pipeline
    from llmprune.cli.main import main
    from llmprune.evals.batch import compress_cell
    from llmprune.evals.spec import recipe_from_dict
    from llmprune.recipe import Calibration, Recipe
    from tests.tiny_models import save_tiny

    folder = save_tiny(tmp_path / "tiny model", "llama")  # a space in the path: the card's command must quote it
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        f"models: ['{folder}']\ncalibration: {{source: c4, nsamples: 2, seqlen: 16, seed: 3}}\nrecipes:\n"
        "  - {method: wanda, sparsity: 0.5, refine: dsnot, ignore: ['mlp\\.down_proj', 'layers\\.0\\..*(q|k)_proj'],\n"
        "     options: {max_cycles: 7, update_threshold: 0.25, dsnot_skip_mlp: false}}\n"
        "evaluations: {perplexity: [wikitext2]}\n")
    spec = load_spec(spec_path)
    recipe = spec.variants[0].recipe
    out = compress_cell(str(folder), recipe, tmp_path / "cell", calibration=spec.calibration)
    manifest = json.loads((out / "llmprune.json").read_text())
    shown = [line for line in (out / "README.md").read_text().splitlines() if line.startswith("llmprune compress ")
             and "--from-manifest" not in line]
    assert len(shown) == 1 and shlex.split(shown[0]) == manifest["command"]
    argv = manifest["command"]
    pairs = list(zip(argv, argv[1:]))
    assert [v for k, v in pairs if k == "--ignore"] == ["mlp\\.down_proj", "layers\\.0\\..*(q|k)_proj"]
    assert [v for k, v in pairs if k == "--option"] == ["dsnot_skip_mlp=false", "max_cycles=7", "update_threshold=0.25"]
    jobs = []
    monkeypatch.setattr(pipeline, "run_compress", lambda job: jobs.append(job) or "done")
    assert main(argv[1:]) == 0
    (job,) = jobs
    assert job.recipe == recipe_from_dict(recipe) == Recipe.from_dict(manifest["recipe"])
    assert job.recipe.ignore and dict(job.recipe.options)["dsnot_skip_mlp"] is False
    assert (job.model, job.output, job.format, job.dtype) == (str(folder), out, "dense", "float32")
    assert job.calibration == Calibration(source="c4", nsamples=2, seqlen=16, seed=3)


def test_batch_device_this_machine_lacks_is_one_line_before_any_cell(tmp_path, monkeypatch):
    """A spec (or --device) naming CUDA on a CPU machine: one line before any work, not one failure per cell."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "spec.yaml"
    path.write_text("models: [m]\nrecipes:\n  - {method: wanda, sparsity: 0.5}\nevaluations: {perplexity: "
                    "[wikitext2]}\ndevice: cuda\n")
    with pytest.raises(UserInputError, match="--device cuda: CUDA is not available here"):
        run_batch(load_spec(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


BAD_OPTION_SPECS = [
    ("{method: magnitude, sparsity: 0.5, options: {foo: 1}}",
     "recipes[0].options: --option foo: not an option of this recipe; choose one of (none)"),
    ("{method: wanda, sparsity: 0.5, refine: dsnot, options: {max_cycles: x}}",
     "recipes[0].options: --option max_cycles=x: dsnot needs a whole number here"),
]


@pytest.mark.parametrize("recipe, message", BAD_OPTION_SPECS)
def test_batch_spec_recipe_options_are_checked_at_load(tmp_path, recipe, message):
    """An option no step reads (or a value of the wrong kind) is refused with the spec's line, not in each cell."""
    path = tmp_path / "spec.yaml"
    path.write_text(f"models: [m]\nrecipes:\n  - {recipe}\nevaluations: {{perplexity: [wikitext2]}}\n")
    with pytest.raises(UserInputError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}:3: {message}"


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def _cli_error(argv: list[str], capsys, root: Path) -> str:
    """Run ``llmprune batch``, expecting exit 2, one line on stderr and nothing written under ``root``."""
    from llmprune.cli.main import main

    before, _ = _files(root), capsys.readouterr()  # the setup's own output (saving the tiny model) aside
    assert main(["batch", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert _files(root) == before
    return err.strip()


@pytest.mark.parametrize("case", ["under a file", "a file", "the model folder", "inside the model folder",
                                  "another checkpoint", "spec cache is a file", "spec output is a file"])
def test_batch_output_folder_checked_before_any_cell(tmp_path, capsys, case):
    spec, folder, _ = _tiny_spec(tmp_path, "  - {method: magnitude, sparsity: 0.5}\n", 1)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out = tmp_path / "out"
    (folder / "sub").mkdir()
    other = tmp_path / "other-checkpoint"
    other.mkdir()
    (other / "llmprune.json").write_text("{}")
    if case.startswith("spec"):
        spec.write_text(spec.read_text() + f"{case.split()[1]}: {afile}\n")
    argv = {"under a file": ["-o", str(afile / "sub")], "a file": ["-o", str(afile)],
            "the model folder": ["-o", str(folder)], "inside the model folder": ["-o", str(folder / "sub")],
            "another checkpoint": ["-o", str(other)]}.get(case, ["-o", str(out)])
    expected = {
        "under a file": f"--output {afile}/sub: {afile} is a file, not a folder; choose another path",
        "a file": f"--output {afile}: a file with that name exists; choose a folder path",
        "the model folder": f"--output {folder}: it is the run's input {folder}, which the batch would write "
                            f"into; choose another folder",
        "inside the model folder": f"--output {folder}/sub: it is inside the run's input {folder}, which the batch "
                                   f"would write into; choose a folder outside it",
        "another checkpoint": f"--output {other}: it holds a model checkpoint (llmprune.json), which the batch would "
                              f"write into; choose another folder",
        "spec cache is a file": f"{spec}: cache {afile}: a file with that name exists; choose a folder path",
        "spec output is a file": f"{spec}: output {afile}: a file with that name exists; choose a folder path"}
    argv = argv if case != "spec output is a file" else []
    assert _cli_error([str(spec), *argv], capsys, tmp_path) == f"error: {expected[case]}"


@pytest.mark.parametrize("exists", [True, False])
def test_batch_output_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch, exists):
    """A read-only place (simulated: root writes anywhere) is found by the probe before any cell runs."""
    import tempfile

    spec, _, _ = _tiny_spec(tmp_path, "  - {method: magnitude, sparsity: 0.5}\n", 1)
    out = tmp_path / "out"
    if exists:
        (out / "cache").mkdir(parents=True)  # a batch output from an earlier run: resuming into it is allowed

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    where = out if exists else tmp_path  # an existing folder is written into; a new one is made beside
    assert _cli_error([str(spec), "-o", str(out)], capsys, tmp_path) == \
        f"error: --output {out}: cannot write in {where} (Permission denied); choose another path"


def test_batch_default_output_of_a_spec_without_suffix():
    from llmprune.evals.batch_checks import default_output

    assert default_output(Path("specs/grid.yaml")) == Path("specs/grid")
    assert default_output(Path("specs/grid")) == Path("specs/grid.out")  # not the spec file itself


@pytest.mark.parametrize("arch, lines, key", [
    ("gpt2", "evaluations:\n  perplexity: [wikitext2]\n  seqlen: 200\n", "evaluations.seqlen"),
    ("llama", "calibration: {nsamples: 2, seqlen: 200}\nevaluations: {perplexity: [wikitext2]}\n",
     "calibration.seqlen"),
])
def test_batch_window_longer_than_the_model_context_is_one_line(tmp_path, capsys, arch, lines, key):
    """GPT-2's learned positions failed each cell with an IndexError; Llama's ran silently out of range."""
    from tests.tiny_models import MAX_POSITIONS, save_tiny

    folder = save_tiny(tmp_path / "tiny", arch)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"models: [{folder}]\nrecipes:\n  - {{method: wanda, sparsity: 0.5}}\n{lines}")
    assert _cli_error([str(spec), "-o", str(tmp_path / "out")], capsys, tmp_path) == \
        f"error: {spec}: model {folder}: {key} 200: the model takes at most {MAX_POSITIONS} positions; give {key} " \
        f"{MAX_POSITIONS} or less"


def test_batch_models_checked_from_config_alias_and_packed(tmp_path, monkeypatch):
    """The alias reads its cached folder's config; a packed checkpoint is refused once, up front; only recipes that
    read calibration windows have their length checked."""
    import shutil

    from llmprune.errors import ModelNotFound
    from llmprune.evals.batch_checks import calibrates
    from llmprune.model.load import compressible_config as model_config
    from llmprune.model import load
    from tests.tiny_models import MAX_POSITIONS, save_tiny

    folder = save_tiny(tmp_path / "tiny", "llama")
    monkeypatch.setattr(load, "ensure_alias", lambda name: folder)
    assert model_config("smollm2-135m").max_position_embeddings == MAX_POSITIONS
    packed = Path(shutil.copytree(folder, tmp_path / "packed"))
    (packed / "llmprune.json").write_text(json.dumps({"format": "sparse24", "model": {"spec": "tiny"}}))
    with pytest.raises(ModelNotFound, match=r"'.*packed' is an llmprune checkpoint stored packed \(sparse24\)"):
        model_config(str(packed))
    assert [calibrates(r) for r in ({"method": "magnitude", "sparsity": "0.5"}, {"method": "wanda", "sparsity": "0.5"},
                                    {"method": "magnitude", "sparsity": "0.5", "quant": "w4g16", "quantizer": "rtn"},
                                    {"method": "magnitude", "sparsity": "0.5", "refine": "dsnot"}, None)] == \
        [False, True, False, True, False]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batch_model_folder_without_tokenizer_is_one_line_before_any_cell(tmp_path, capsys, arch):
    """The folder's weights load; only its missing tokenizer fails, which the model's cell found after the cells
    before it had run (Llama's transformers error; GPT-2's empty tokenizer, which encodes text to nothing)."""
    from tests.tiny_models import save_tiny

    folder = save_tiny(tmp_path / "tiny", arch)
    for file in folder.glob("tokenizer*"):
        file.unlink()
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"models: [{folder}]\nrecipes:\n  - {{method: magnitude, sparsity: 0.5}}\n"
                    "evaluations: {perplexity: [wikitext2]}\n")
    err = _cli_error([str(spec), "-o", str(tmp_path / "out")], capsys, tmp_path)
    assert err.startswith(f"error: {spec}: models: no usable tokenizer in '{folder}' ("), err
    assert err.endswith("copy the base model's tokenizer files (tokenizer.json, tokenizer_config.json) into it"), err


@pytest.mark.parametrize("model", ["missing-dir/", "no-such-hub-model"])
def test_batch_missing_model_is_one_line_before_any_cell(tmp_path, capsys, monkeypatch, model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"models: [{model}]\nrecipes:\n  - {{method: magnitude, sparsity: 0.5}}\n"
                    "evaluations: {perplexity: [wikitext2]}\n")
    err = _cli_error([str(spec), "-o", str(tmp_path / "out")], capsys, tmp_path)
    start = f"model path '{model}' does not exist" if "/" in model else f"model '{model}' not found locally"
    assert err.startswith(f"error: {spec}: models: {start}"), err


def test_batch_damaged_cached_result_is_recomputed_quietly(tmp_path, capsys, recwarn):
    """A damaged results/*.json is one warning naming it and is computed again; --quiet shows no library bars. The
    spec has no suffix: its default output is SPEC.out beside it, and a second run resumes into it."""
    from llmprune.cli.main import main

    spec, _, _ = _tiny_spec(tmp_path, "  - {method: magnitude, sparsity: 0.5}\n", 1)
    bare = spec.rename(tmp_path / "grid")
    capsys.readouterr()
    assert main(["batch", str(bare), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err
    cached = sorted((tmp_path / "grid.out" / "cache" / "results").glob("*.json"))
    assert len(cached) == 2
    cached[0].write_text("{bad")
    cached[1].write_text('{"foo": 1}')
    recwarn.clear()
    assert main(["batch", str(bare), "--quiet"]) == 0
    warned = [str(w.message) for w in recwarn if "cached result" in str(w.message)]
    assert sorted(warned) == sorted(f"{path}: not a readable cached result (damaged or edited?); computing the cell "
                                    f"again" for path in cached)
    assert all(json.loads(path.read_text())["status"] == "ok" for path in cached)


def test_batch_plot_names_are_visible_and_distinct_per_model(tmp_path):
    text = SPEC.replace("models: [fake-model]", "models: [./fake-model, fake-model]")
    written = write_report(_runner(tmp_path, Fakes(), text).run(), tmp_path / "out")
    pngs = [p.name for p in written if p.suffix == ".png"]
    assert len(pngs) == len(set(pngs)) == 4 and not any(name.startswith((".", "-")) for name in pngs)
    assert "fake-model-acc-vs-bits.png" in pngs


def test_model_fingerprint_ignores_recorded_evaluations(tmp_path):
    """`llmprune eval` records its results in the folder's llmprune.json: the batch cache keyed on that folder must
    not be thrown away for it; the weights and config still count."""
    from llmprune.evals.fingerprints import model_fingerprint
    from tests.tiny_models import save_tiny

    folder = save_tiny(tmp_path / "m", "llama")
    (folder / "llmprune.json").write_text('{"evaluations": []}')
    before = model_fingerprint(str(folder))
    (folder / "llmprune.json").write_text('{"evaluations": [{"ppl": 1.0}]}')
    assert model_fingerprint(str(folder)) == before
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 0.0123456789}))  # a new size
    assert model_fingerprint(str(folder)) != before


def test_dense_row_of_a_pruned_input_reports_its_sparsity(tmp_path):
    """The uncompressed baseline of an llmprune output folder is that folder as it is: pruned (it said 0.000)."""
    from llmprune.evals.batch_cell import size_metrics

    folder = tmp_path / "pruned"
    folder.mkdir()
    (folder / "llmprune.json").write_text(json.dumps({"report": {"achieved_sparsity": 0.5}}))
    assert size_metrics(None, "float32", str(folder)) == {"sparsity": 0.5, "bits": 32.0}
    assert size_metrics(None, "bfloat16", str(tmp_path)) == {"sparsity": 0.0, "bits": 16.0}
    assert size_metrics(None, "float32", "smollm2-135m") == {"sparsity": 0.0, "bits": 32.0}
