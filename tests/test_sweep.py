"""Sweeps: level parsing, the knee rule, dense-weight restoring and reuse, outputs, and one-line CLI errors."""
from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

from llmprune.cli.main import main
from llmprune.cli.sweep import recommendation
from llmprune.errors import UserInputError
from llmprune.evals.sweep import SweepConfig, SweepHooks, SweepPoint, SweepResult, knee, run_sweep, write_sweep
from llmprune.evals.sweep_levels import parse_levels
from llmprune.recipe import NM, Unstructured
from tests.tiny_models import tiny_model


def test_sweep_range_includes_stop_within_rounding():
    assert parse_levels("0.1:0.9:0.1") == tuple(Unstructured(f / 10) for f in range(1, 10))
    assert parse_levels("0.1:0.7:0.2") == (Unstructured(0.1), Unstructured(0.3), Unstructured(0.5), Unstructured(0.7))
    assert parse_levels("0.1:0.6:0.2") == (Unstructured(0.1), Unstructured(0.3), Unstructured(0.5))
    assert parse_levels("0.5:0.5:0.1") == (Unstructured(0.5),)


def test_sweep_lists_mix_fractions_nm_and_ranges():
    assert parse_levels("0.5,2:4,4:8") == (Unstructured(0.5), NM(2, 4), NM(4, 8))
    assert parse_levels("0.4:0.6:0.1, 2:4, 0.5") == (Unstructured(0.4), Unstructured(0.5), Unstructured(0.6), NM(2, 4))


@pytest.mark.parametrize("text, message", [
    ("0.9:0.1:0.1", "empty range"), ("0:0.5:0.1", "outside (0, 1)"), ("0.1:1.2:0.1", "outside (0, 1)"),
    ("0.1:0.5:0", "step must be a positive"), ("0.1:0.5:-0.1", "step must be a positive"), ("3:2", "N must be smaller"),
    ("0.1:0.9:inf", "step must be a positive number"), ("0.1:0.9:nan", "step must be a positive number"),
    ("0.1:0.9:0.00001", "80001 levels, each a compression and an evaluation; at most 100"),
    ("0:4", "at least 1"), ("2:x", "two whole numbers"), ("abc", "not a number"), ("", "no levels"),
    ("0.5,,0.6", "empty entry"), ("1.5", "fraction in (0, 1)"), ("0.5@g16", "group sparsity"),
    ("a:0.5:0.1", "not a number"), ("1:2:3:4", "two whole numbers"), ("0.1:0.9", "START:STOP:STEP"),
])
def test_sweep_bad_levels_are_one_line_errors(text, message):
    with pytest.raises(UserInputError) as info:
        parse_levels(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def _point(variant, sparsity, ppl):
    level = NM(*map(int, sparsity.split(":"))) if ":" in sparsity else Unstructured(float(sparsity))
    return SweepPoint(variant, sparsity, level.fraction, "nm" if ":" in sparsity else "unstructured", ppl,
                      level.fraction, 0.0, 0.0)


def test_sweep_knee_is_first_level_over_margin():
    # dense 10, margin 10% -> limit 11: 0.1..0.3 within, 0.4 over (even though 0.5 dips back under)
    ppls = {"0.1": 10.1, "0.2": 10.5, "0.3": 10.99, "0.4": 11.5, "0.5": 10.8, "2:4": 10.9, "4:8": 12.0}
    points = [_point("wanda", s, p) for s, p in ppls.items()]
    k = knee(points, 10.0, 0.1)
    assert (k["essential_sparsity"], k["knee_sparsity"], k["knee_ppl"]) == (0.3, 0.4, 11.5)
    assert k["nm_within_margin"] == ["2:4"] and math.isclose(k["ppl_limit"], 11.0)
    assert knee([_point("m", "0.2", 30.0)], 10.0, 0.1)["essential_sparsity"] is None
    assert knee([_point("m", "0.2", float("nan"))], 10.0, 0.1)["knee_sparsity"] == 0.2
    none_over = knee([_point("m", "0.2", 10.0)], 10.0, 0.1)
    assert none_over["knee_sparsity"] is None and none_over["essential_sparsity"] == 0.2


def test_sweep_recommendation_names_essential_sparsity_and_knee():
    result = SweepResult("tiny", "wikitext2", 10.0, 0.1, [_point("wanda", "0.3", 10.5), _point("wanda", "0.4", 12.0),
                                                          _point("magnitude", "2:4", 20.0)])
    lines = recommendation(result)
    assert "essential sparsity 0.3" in lines[0] and "at 0.4 ppl 12.000" in lines[0]
    assert "no unstructured level" in lines[1] and "none" in lines[1]


def _direct_ppl(model, ids):
    """exp(mean next-token NLL) of ``ids`` by the direct formula."""
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].double()
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).exp())


@pytest.fixture()
def tiny():
    model, _ = tiny_model("llama")
    return model


def _hooks(model, seen, calls):
    from llmprune.compress import compress_

    dense = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))

    def compress(m, recipe, calib, **kw):
        seen.append(all(torch.equal(v, dense[k]) for k, v in m.state_dict().items()))  # starts from dense
        return compress_(m, recipe, calib, **kw)

    def calibrate(m, tokenizer, config):
        calls.append(config.calibration)
        return SimpleNamespace(ids=torch.randint(0, 320, (4, 16), generator=torch.Generator().manual_seed(1)),
                               sha256="fake")

    return SweepHooks(compress=compress, evaluate=lambda m: _direct_ppl(m, ids), calibrate=calibrate,
                      log=lambda line: None), dense, ids


def test_sweep_magnitude_restores_dense_and_draws_no_calibration(tiny):
    seen, calls = [], []
    hooks, dense, ids = _hooks(tiny, seen, calls)
    config = SweepConfig(variants=("magnitude",), levels=parse_levels("0.2:0.8:0.3,2:4"))
    result = run_sweep(tiny, None, config, model_name="tiny", progress=False, hooks=hooks)
    assert calls == [] and result.calibration is None and seen == [True] * 4
    assert [p.sparsity for p in result.points] == ["0.2", "0.5", "0.8", "2:4"]
    assert all(torch.equal(v, dense[k]) for k, v in tiny.state_dict().items())
    assert result.dense_ppl == pytest.approx(_direct_ppl(tiny, ids))
    for p in result.points:
        assert p.achieved_sparsity == pytest.approx(p.fraction, abs=1e-3)
    from llmprune.compress import compress_
    from llmprune.recipe import Recipe

    fresh, _ = tiny_model("llama")  # same seed, same dense weights: the level measured is the level pruned
    compress_(fresh, Recipe(method="magnitude", sparsity=Unstructured(0.8)), None, progress=False)
    assert result.points[2].ppl == pytest.approx(_direct_ppl(fresh, ids)) != result.dense_ppl


def test_sweep_failing_level_is_recorded_and_the_sweep_goes_on(tiny, tmp_path):
    seen, calls = [], []
    hooks, dense, ids = _hooks(tiny, seen, calls)
    inner = hooks.compress

    def compress(m, recipe, calib, **kw):
        if str(recipe.sparsity) == "0.5":
            raise RuntimeError("mask does not prune exactly 12 weights\nsecond line")
        return inner(m, recipe, calib, **kw)

    config = SweepConfig(variants=("magnitude",), levels=parse_levels("0.2,0.5,0.8"))
    result = run_sweep(tiny, None, config, model_name="tiny", progress=False,
                       hooks=SweepHooks(compress=compress, evaluate=hooks.evaluate, log=lambda line: None))
    assert [(p.sparsity, p.error) for p in result.points] == [
        ("0.2", None), ("0.5", "RuntimeError: mask does not prune exactly 12 weights"), ("0.8", None)]
    assert [p.sparsity for p in result.points_of("magnitude")] == ["0.2", "0.8"]  # knees and plot skip it
    assert all(torch.equal(v, dense[k]) for k, v in tiny.state_dict().items())
    write_sweep(result, tmp_path / "out")
    assert "RuntimeError: mask does not prune" in (tmp_path / "out" / "sweep.csv").read_text()


def test_sweep_wanda_and_dsnot_share_one_calibration_draw(tiny):
    seen, calls = [], []
    hooks, dense, _ = _hooks(tiny, seen, calls)
    config = SweepConfig(variants=("wanda", "wanda+dsnot", "magnitude"), levels=(Unstructured(0.5), NM(2, 4)),
                         options=(("dsnot_skip_mlp", False),))
    result = run_sweep(tiny, None, config, model_name="tiny", progress=False, hooks=hooks)
    assert len(calls) == 1 and seen == [True] * 6 and result.reuse["calibration_windows"]
    assert result.variants() == ["wanda", "wanda+dsnot", "magnitude"]
    plain, refined = result.points_of("wanda"), result.points_of("wanda+dsnot")
    assert [p.achieved_sparsity for p in plain] == pytest.approx([p.achieved_sparsity for p in refined])
    assert any(a.ppl != b.ppl for a, b in zip(plain, refined))  # DSnoT changed the masks
    assert all(torch.equal(v, dense[k]) for k, v in tiny.state_dict().items())


def test_sweep_rejects_dsnot_with_group_sparsity_and_unknown_names():
    with pytest.raises(UserInputError, match="did you mean 'dsnot'"):
        SweepConfig(variants=("wanda+dsnto",), levels=(Unstructured(0.5),)).recipes()
    with pytest.raises(UserInputError, match="did you mean 'wanda'"):
        SweepConfig(variants=("wnada",), levels=(Unstructured(0.5),)).recipes()


def _result():
    pts = [_point("wanda", s, p) for s, p in {"0.2": 10.2, "0.4": 10.8, "0.6": 14.0, "2:4": 13.0}.items()]
    pts += [_point("wanda+dsnot", s, p) for s, p in {"0.2": 10.1, "0.4": 10.6, "0.6": 12.5}.items()]
    return SweepResult("tiny-model", "wikitext2", 10.0, 0.1, pts, reuse={"calibration_windows": True})


def test_sweep_writes_json_csv_png(tmp_path):
    out = tmp_path / "sweep"
    write_sweep(_result(), out)
    data = json.loads((out / "sweep.json").read_text())
    assert data["knees"]["wanda"]["knee_sparsity"] == 0.6 and data["knees"]["wanda"]["essential_sparsity"] == 0.4
    assert "first unstructured level" in data["knee_rule"] and len(data["points"]) == 7
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["within_margin"] for r in rows[:4]] == ["True", "True", "False", "False"]
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out / "sweep.png").shape[1] >= 800


def test_sweep_plot_has_labels_legend_title_and_log_scale(monkeypatch):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from llmprune.evals import sweep_plot

    fig, ax = plt.subplots()
    sweep_plot._draw(ax, _result())
    assert ax.get_yscale() == "log" and "sparsity" in ax.get_xlabel() and "perplexity" in ax.get_ylabel()
    assert "tiny-model" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"wanda", "wanda+dsnot", "wanda 2:4", "wanda knee (0.6)"} <= set(labels)
    assert any(label.startswith("dense") for label in labels)
    plt.close(fig)


def test_sweep_nothing_written_when_plotting_fails(tmp_path, monkeypatch):
    from llmprune.evals import sweep_plot

    def broken(result, path):
        raise RuntimeError("boom")

    monkeypatch.setattr(sweep_plot, "plot_sweep", broken)
    with pytest.raises(RuntimeError):
        write_sweep(_result(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "0.9:0.1:0.1"], "empty range"),
    (["--sparsity", "0.1:1.5:0.1"], "outside (0, 1)"),
    (["--sparsity", "0.5,5:4"], "N must be smaller"),
    (["--refine", "dsnto"], "did you mean 'dsnot'"),
    (["--method", "wanda+dsnto"], "did you mean 'dsnot'"),
    (["--method", "wnada"], "did you mean 'wanda'"),
    (["--refine", "dsnot", "--sparsity", "0.5@g16"], "group sparsity"),
    (["--knee-margin", "0"], "--knee-margin"),
    (["--ppl", "wikitxt2"], "did you mean 'wikitext2'"),  # before the (missing) model would load
    (["--calib", "nosuch"], "--calib nosuch: unknown source"),  # so is the calibration source
    (["--calib", "missing.txt"], "missing.txt"),
])
def test_sweep_cli_bad_input_exits_2_and_writes_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", "no-such-model", "--method", "magnitude", "-o", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_sweep_cli_end_to_end_on_a_tiny_model(tmp_path, capsys):
    from tests.tiny_models import save_tiny

    src = save_tiny(tmp_path / "src", "llama")
    text = tmp_path / "eval.txt"
    text.write_text(" ".join(["Sparse models keep only their largest weights, and a sweep shows how many."] * 30))
    out = tmp_path / "out"
    code = main(["sweep", str(src), "--method", "magnitude", "--method", "wanda+dsnot", "--sparsity", "0.3,0.6,2:4",
                 "--calib", "c4", "--nsamples", "2", "--seqlen", "16", "--ppl", str(text), "--ppl-seqlen", "64",
                 "-o", str(out), "--quiet"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads((out / "sweep.json").read_text())
    assert [p["variant"] for p in data["points"]] == ["magnitude"] * 3 + ["wanda+dsnot"] * 3
    assert data["calibration"]["nsamples"] == 2 and data["reuse"]["calibration_windows"]
    assert data["protocol"] == {"dataset": text.name, "seqlen": 64, "max_windows": None}
    assert "essential sparsity" in stdout or "no level stays" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.json", "sweep.png"]


@pytest.mark.parametrize("arch, args, message", [
    ("gpt2", ["--seqlen", "256"], "--seqlen 256: the model takes at most 128 positions"),  # learned positions
    ("gpt2", ["--ppl-seqlen", "256"], "--ppl-seqlen 256: the model takes at most 128 positions"),
    ("llama", ["--ppl-seqlen", "100000"], "--ppl-seqlen 100000: the model takes at most"),
])
def test_sweep_cli_windows_longer_than_the_model_takes_are_one_line(arch, args, message, tmp_path, capsys):
    from tests.tiny_models import save_tiny

    src = save_tiny(tmp_path / "src", arch)
    capsys.readouterr()
    out = tmp_path / "out"
    code = main(["sweep", str(src), "--method", "wanda", "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "16",
                 "-o", str(out), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("progress", [False, True])
def test_sweep_default_calibrate_hook_shows_selfgen_bar_only_with_progress(progress, tiny, capfd):
    """The default ``calibrate`` hook draws --calib self windows with the sweep's ``progress`` (--quiet: no bar)."""
    from llmprune.recipe import Calibration
    from tests.tiny_models import tiny_tokenizer

    config = SweepConfig(variants=("wanda",), levels=(Unstructured(0.5),),
                         calibration=Calibration(source="self", nsamples=2, seqlen=8, seed=0))
    drawn = []

    def compress(m, recipe, calib, **kw):
        drawn.append(calib.ids.shape)
        return SimpleNamespace(achieved_sparsity=lambda: 0.5)

    capfd.readouterr()
    run_sweep(tiny, tiny_tokenizer(), config, model_name="tiny", progress=progress,
              hooks=SweepHooks(compress=compress, evaluate=lambda m: 1.0, log=lambda line: None))
    err = capfd.readouterr().err
    assert drawn == [(2, 8)]  # the hook did generate the windows
    assert ("generating calibration text" in err) == progress, err


def test_sweep_cli_quiet_self_calibration_prints_only_its_lines(tmp_path, capfd):
    from tests.tiny_models import save_tiny

    src = save_tiny(tmp_path / "src", "llama")
    text = tmp_path / "eval.txt"
    text.write_text(" ".join(["Sparse models keep only their largest weights, and a sweep shows how many."] * 30))
    capfd.readouterr()
    code = main(["sweep", str(src), "--method", "wanda", "--sparsity", "0.5", "--calib", "self", "--nsamples", "2",
                 "--seqlen", "8", "--ppl", str(text), "--ppl-seqlen", "64", "-o", str(tmp_path / "out"), "--quiet"])
    out, err = capfd.readouterr()
    assert code == 0, err
    lines = err.splitlines()  # the sweep's own log lines, one per level, and no bar (selfgen, "Loading weights")
    assert len(lines) == 2 and lines[0].startswith("dense: ppl ") and lines[1].startswith("wanda 0.5: ppl "), err
    assert "wrote " in out


def test_sweep_options_go_to_the_variants_that_read_them():
    config = SweepConfig(variants=("wanda", "wanda+dsnot"), levels=(Unstructured(0.5),),
                         options=(("dsnot_skip_mlp", False), ("max_cycles", 5)))
    recipes = dict(config.recipes())
    assert recipes["wanda"].options == () and dict(recipes["wanda+dsnot"].options) == {"dsnot_skip_mlp": False,
                                                                                      "max_cycles": 5}
    with pytest.raises(UserInputError, match="--option max_cycle: no variant of this sweep takes it"):
        SweepConfig(variants=("wanda", "wanda+dsnot"), levels=(Unstructured(0.5),),
                    options=(("max_cycle", 5),)).recipes()


def test_sweep_cli_a_method_given_twice_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", str(tmp_path / "no-model"), "--method", "wanda", "--method", "magnitude", "--method",
                 "wanda", "--sparsity", "0.5", "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: --method wanda is given twice; give each method once\n", err
    assert not out.exists()
