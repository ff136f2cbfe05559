"""``llmprune eval``: perplexity through the CLI on a saved tiny model, the protocol printed, JSON output."""
from __future__ import annotations

import json
import math

import pytest
import torch

from llmprune.cli.main import main
from tests.tiny_models import save_tiny, tiny_tokenizer


def test_cli_eval_ppl_matches_direct_loss_and_prints_protocol(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    src = save_tiny(tmp_path / "src", "llama")
    text_file = tmp_path / "eval.txt"
    text_file.write_text(" ".join(["Sparse models keep accuracy when pruned with care."] * 40))
    capsys.readouterr()
    code = main(["eval", str(src), "--ppl", str(text_file), "--seqlen", "32", "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    row = json.loads(captured.out)["perplexity"][0]
    assert "windows of 32 tokens" in captured.err and f"{row['tokens']} predicted tokens" in captured.err
    # direct: HF's own shifted cross-entropy per window, averaged over windows (equal window sizes)
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    ids = tiny_tokenizer()(text_file.read_text(), return_tensors="pt").input_ids[0]
    windows = ids[: (ids.numel() // 32) * 32].view(-1, 32)
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    assert row["windows"] == len(losses)
    assert math.isclose(row["ppl"], math.exp(sum(losses) / len(losses)), rel_tol=1e-4)
    # a quick check scores the first windows only, and says so
    assert main(["eval", str(src), "--ppl", str(text_file), "--seqlen", "32", "--ppl-max-windows", "3", "--json",
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out)["perplexity"][0]
    assert row["windows"] == 3 and f"the first 3 of {len(losses)} non-overlapping windows" in captured.err
    assert math.isclose(row["ppl"], math.exp(sum(losses[:3]) / 3), rel_tol=1e-4)


def test_cli_eval_needs_something_to_do(tmp_path, capsys):
    src = save_tiny(tmp_path / "src", "llama")
    capsys.readouterr()
    assert main(["eval", str(src)]) == 2
    assert capsys.readouterr().err.startswith("error: nothing to evaluate")


@pytest.mark.parametrize("flags, words", [
    (["--ppl", "wikitext2", "--device", "mps"], "--device mps: choose cpu or cuda"),
    (["--tasks", "arc_easy", "--limit", "0"], "--limit 0: give a positive number"),
    (["--tasks", "arc_easy", "--limit", "-1"], "--limit -1: give a positive number"),
    (["--tasks", "arc_easy", "--limit", "2.5"], "--limit 2.5: from 1 up it counts examples per task, a whole"),
    (["--ppl", ","], "--ppl ',': name a set"),
    (["--ppl", "wikitext2", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--ppl", "wikitext2", "--ppl-max-windows", "0"], "--ppl-max-windows 0: must be at least 1"),
    (["--ppl", "wikitxt2"], "did you mean 'wikitext2'?"),  # data names are checked before the model loads
    (["--ppl", "wikitext2", "--max-seqlen", "0"], "--max-seqlen 0: must be at least 2"),
    (["--tasks", "arc_easy", "--num-fewshot", "-1"], "--num-fewshot -1: must be 0 or more"),
])
def test_cli_eval_bad_flags_are_one_line_before_loading(flags, words, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "never-loaded"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1, err


def test_cli_eval_window_longer_than_the_model_context_is_one_line(tmp_path, capsys, monkeypatch):
    """Read from the config, before the weights load (no loading bar before the error, no wait on a big model)."""
    from llmprune.cli import eval as cli_eval

    src = save_tiny(tmp_path / "src", "gpt2")  # learned absolute positions: an index error otherwise
    text_file = tmp_path / "eval.txt"
    text_file.write_text("Sparse models keep accuracy. " * 50)
    capsys.readouterr()
    monkeypatch.setattr(cli_eval, "load_for_eval", lambda *a, **k: pytest.fail("the model was loaded first"))
    assert main(["eval", str(src), "--ppl", str(text_file), "--seqlen", "100000"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --seqlen 100000: the model takes at most 128 positions; give --seqlen 128 or less\n", err


def test_cli_eval_of_a_packed_folder_without_its_manifest_loads_it_through_transformers(tmp_path, capsys):
    """Same perplexity as with the manifest; a warning says the checksums went unchecked (it was refused with
    advice meant for compress)."""
    from tests.publish_fixtures import packed_checkpoint

    folder = packed_checkpoint(tmp_path / "out")
    text_file = tmp_path / "eval.txt"
    text_file.write_text(" ".join(["Sparse models keep accuracy when pruned with care."] * 40))
    args = ["eval", str(folder), "--ppl", str(text_file), "--seqlen", "32", "--json", "--quiet", "--no-record"]
    capsys.readouterr()
    assert main(args) == 0
    with_manifest = json.loads(capsys.readouterr().out)["perplexity"][0]["ppl"]
    (folder / "llmprune.json").unlink()
    with pytest.warns(UserWarning, match="has no llmprune.json: loaded through transformers"):
        assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"][0]["ppl"] == pytest.approx(with_manifest, rel=1e-5)


def test_cli_eval_records_results_with_an_llmprune_folder(tmp_path, capsys):
    """The numbers printed are the numbers kept: llmprune.json's ``evaluations`` and the card (table and Hub
    model-index). A capped quick check is kept beside the full run with its note, out of model-index; the same
    measurement re-run replaces its row; --no-record and a hand-edited card are left alone."""
    from huggingface_hub import ModelCard

    from llmprune.model_cards.render import GENERATED_MARK
    from tests.publish_fixtures import packed_checkpoint

    folder = packed_checkpoint(tmp_path / "out")
    text_file = tmp_path / "eval.txt"
    text_file.write_text(" ".join(["Sparse models keep accuracy when pruned with care."] * 40))
    args = ["eval", str(folder), "--ppl", str(text_file), "--seqlen", "32", "--json", "--quiet"]

    def run(*extra):
        capsys.readouterr()
        assert main([*args, *extra]) == 0
        return json.loads(capsys.readouterr().out)["perplexity"][0]

    def evaluations():
        return json.loads((folder / "llmprune.json").read_text())["evaluations"]

    import hashlib

    sha = f"file sha256 {hashlib.sha256(text_file.read_bytes()).hexdigest()[:12]}"  # a file is told apart by it
    full = run()
    assert [(r["name"], r["value"], r["note"]) for r in evaluations()] == [("eval.txt", full["ppl"],
                                                                          f"seqlen 32, {sha}")]
    card = ModelCard.load(folder / "README.md")
    assert f"| eval.txt | ppl | {full['ppl']:.4f} | — | {full['windows']} | seqlen 32, {sha} |" in card.text
    assert [r.metric_value for r in card.data.eval_results] == [round(full["ppl"], 6)]
    quick = run("--ppl-max-windows", "3")
    assert [r["note"] for r in evaluations()] == [f"seqlen 32, {sha}",
                                                  f"seqlen 32, first 3 of {full['windows']} windows, {sha}"]
    card = ModelCard.load(folder / "README.md")
    assert f"| {quick['ppl']:.4f} | — | 3 | seqlen 32, first 3 of" in card.text and len(card.data.eval_results) == 1
    run()
    assert len(evaluations()) == 2  # the same measurement replaced its row
    other = tmp_path / "other" / "eval.txt"  # another text of the same name: another benchmark, another row
    other.parent.mkdir()
    other.write_text(" ".join(["Dense models need no care at all, they say."] * 40))
    run("--ppl", str(other))  # the last --ppl wins
    assert len(evaluations()) == 3 and len({r["note"] for r in evaluations()}) == 3
    before = (folder / "llmprune.json").read_text()
    run("--no-record")
    assert (folder / "llmprune.json").read_text() == before
    (folder / "README.md").write_text("# my own card\n")  # no generated mark: the user's card is kept
    run("--seqlen", "16")
    assert (folder / "README.md").read_text() == "# my own card\n" and len(evaluations()) == 4
    assert GENERATED_MARK not in (folder / "README.md").read_text()


def test_cli_eval_that_cannot_record_still_succeeds_with_a_warning(tmp_path, capsys, monkeypatch):
    """A read-only folder (simulated: root writes anywhere): the numbers are printed, one warning says they were
    not recorded and how to avoid it, exit 0."""
    import llmprune.model_cards as cards
    from tests.publish_fixtures import packed_checkpoint

    folder = packed_checkpoint(tmp_path / "out")
    text_file = tmp_path / "eval.txt"
    text_file.write_text(" ".join(["Sparse models keep accuracy when pruned with care."] * 40))

    def read_only(directory, rows, dtype):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cards, "record_results", read_only)
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"were not recorded in .*Permission denied.*--no-record"):
        assert main(["eval", str(folder), "--ppl", str(text_file), "--seqlen", "32", "--quiet"]) == 0
    assert "| eval.txt | ppl" in capsys.readouterr().out
