"""Zero-shot evaluation through lm-eval: a tiny local task end to end against a direct log-likelihood oracle, the
offline task copies against lm-eval's own YAMLs and the data facts in shared/data/SOURCES.md, and the task-name rule."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from llmprune.errors import DataNotFound, UserInputError
from tests.tiny_models import tiny_model, tiny_tokenizer


QUESTIONS = [
    ("The sky on a clear day is", ["blue", "green", "loud"], 0),
    ("Fish live in", ["trees", "water", "fire"], 1),
    ("Two plus two equals", ["four", "seven", "nine"], 0),
    ("A language model predicts the next", ["chair", "token", "river"], 1),
    ("Sparse matrices store only their", ["non-zero entries", "colours", "names"], 0),
]


def _write_task(folder: Path, questions=QUESTIONS) -> None:
    rows = [{"q": q, "choices": c, "gold": g} for q, c, g in questions]
    (folder / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny_task.yaml").write_text(yaml.safe_dump({
        "task": "tiny_local_qa", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(folder / "tiny.jsonl")}},
        "output_type": "multiple_choice", "test_split": "test", "doc_to_text": "Question: {{q}}\nAnswer:",
        "doc_to_choice": "{{choices}}", "doc_to_target": "gold",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }))


def _oracle_loglik(model, tokenizer, context: str, choice: str) -> float:
    """log P(choice | context) summed over the continuation tokens, by one plain forward pass (lm-eval's split:
    the continuation is what encoding context + ' ' + choice adds after the context's tokens)."""
    whole = tokenizer.encode(context + " " + choice, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits.double(), dim=-1)[0]
    return float(sum(logprobs[t - 1, whole[t]] for t in range(len(ctx), len(whole))))


def test_zeroshot_tiny_local_task_matches_direct_loglikelihoods(tmp_path):
    from llmprune.evals.zeroshot import run_zeroshot

    _write_task(tmp_path)
    model, _ = tiny_model("llama")
    tokenizer = tiny_tokenizer()
    result = run_zeroshot(model, tokenizer, ["tiny_local_qa"], batch_size=2, include_path=[tmp_path])
    expected = [[_oracle_loglik(model, tokenizer, f"Question: {q}\nAnswer:", c) for c in choices]
                for q, choices, _ in QUESTIONS]
    got = result.loglikelihoods["tiny_local_qa"]
    assert len(got) == len(QUESTIONS)
    for row_got, row_want in zip(got, expected):
        assert row_got == pytest.approx(row_want, abs=1e-3)
    answers = [max(range(len(r)), key=r.__getitem__) for r in expected]
    acc = sum(a == g for a, (_, _, g) in zip(answers, QUESTIONS)) / len(QUESTIONS)
    score = result.scores[0]
    assert result.answers["tiny_local_qa"] == answers
    assert score.acc == pytest.approx(acc) and score.samples == len(QUESTIONS) and score.source == "include"
    assert "| tiny_local_qa | include | 5 |" in result.table()
    assert json.loads(json.dumps(result.to_dict()))["scores"][0]["acc"] == pytest.approx(acc)


def _task_yaml(folder: Path, name: str) -> dict:
    """A task YAML with its ``include`` merged in (``!function`` tags kept as text)."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {node.value}")
    data = yaml.load((folder / name).read_text(), Loader=Loader)
    if "include" in data:
        data = {**_task_yaml(folder, str(Path(name).parent / data["include"])), **data}
    return data


def _standard_yaml(relative: str) -> dict:
    import lm_eval

    return _task_yaml(Path(lm_eval.__file__).parent / "tasks", relative)


PROMPT_KEYS = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice")


@pytest.mark.parametrize("name, standard", [("arc_easy", "arc/arc_easy.yaml"),
                                            ("arc_challenge", "arc/arc_challenge.yaml"),
                                            ("piqa", "piqa/piqa.yaml"), ("boolq", "super_glue/boolq/default.yaml"),
                                            ("hellaswag", "hellaswag/hellaswag.yaml")])
def test_offline_task_prompts_and_metrics_equal_lm_eval_standard(name, standard):
    from llmprune.evals.zeroshot import TASKS_DIR

    ours = _task_yaml(TASKS_DIR, f"{name}.yaml")
    theirs = _standard_yaml(standard)
    assert {k: ours.get(k) for k in PROMPT_KEYS} == {k: theirs.get(k) for k in PROMPT_KEYS}
    assert [m["metric"] for m in ours["metric_list"]] == [m["metric"] for m in theirs["metric_list"]]
    split = theirs.get("test_split") or theirs.get("validation_split")
    assert (ours.get("test_split") or ours.get("validation_split")) == split
    assert ours["task"] == f"llmprune_{name}"


def _docs(task_name: str):
    from lm_eval.tasks import TaskManager, get_task_dict

    from llmprune.evals.zeroshot import TASKS_DIR

    manager = TaskManager(include_defaults=False, include_path=str(TASKS_DIR))
    if hasattr(manager, "load"):  # lm-eval 0.4.11+; get_task_dict, all that 0.4.10 has, is deprecated there
        task = manager.load([task_name])["tasks"][task_name]
    else:
        task = get_task_dict([task_name], manager)[task_name]
    return task, list(task.eval_docs)


def test_offline_arc_easy_rows_match_sources_md(shared_data):
    task, docs = _docs("llmprune_arc_easy")
    assert len(docs) == 2376  # the official ARC-Easy test count
    first = json.loads((shared_data / "arc_easy" / "ARC-Easy-Test.jsonl").read_text().splitlines()[0])
    assert first["id"] == "Mercury_417466"
    assert task.doc_to_text(docs[0]) == f"Question: {first['question']['stem']}\nAnswer:"
    assert task.doc_to_choice(docs[0]) == [c["text"] for c in first["question"]["choices"]]
    assert task.doc_to_target(docs[0]) == "ABCD".index(first["answerKey"])


def test_offline_boolq_piqa_hellaswag_label_counts_match_sources_md(shared_data):
    _, boolq = _docs("llmprune_boolq")
    assert len(boolq) == 3270 and sum(d["label"] for d in boolq) == 2033  # 2033 true -> "yes" (index 1)
    _, piqa = _docs("llmprune_piqa")
    assert len(piqa) == 1838 and sum(1 - d["label"] for d in piqa) == 910
    task, hella = _docs("llmprune_hellaswag")
    counts = [sum(d["label"] == k for d in hella) for k in range(4)]
    assert len(hella) == 10042 and counts == [2515, 2485, 2584, 2458]
    assert task.doc_to_text(hella[0]) == "Roof shingle removal: A man is sitting on a roof. he"
    assert task.doc_to_choice(hella[0])[3] == "starts pulling up roofing on a roof."
    assert task.doc_to_target(hella[0]) == 3


def test_zeroshot_task_rule_local_then_hub(monkeypatch, tmp_path, shared_data):
    from llmprune.evals.zeroshot import resolve_tasks

    monkeypatch.setenv("LLMPRUNE_DATA_DIR", str(shared_data))
    assert [(c.task, c.source) for c in resolve_tasks(["arc_easy", "hellaswag"])] == \
        [("llmprune_arc_easy", "local"), ("llmprune_hellaswag", "local")]
    monkeypatch.setenv("LLMPRUNE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    assert [(c.task, c.source) for c in resolve_tasks(["piqa"])] == [("piqa", "hub")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataNotFound, match=r"task piqa: piqa/valid.jsonl not found in LLMPRUNE_DATA_DIR="):
        resolve_tasks(["piqa"])


def test_zeroshot_unknown_task_did_you_mean():
    from llmprune.evals.zeroshot import resolve_tasks

    with pytest.raises(UserInputError, match=r"unknown zero-shot task 'arc_eazy'; did you mean 'arc_easy'\?"):
        resolve_tasks(["arc_eazy"])
    with pytest.raises(UserInputError, match="--tasks is empty"):
        resolve_tasks([" "])


def test_eval_cli_unknown_task_is_one_line_exit_2(tmp_path, capsys):
    from llmprune.cli.main import main
    from tests.tiny_models import save_tiny

    folder = save_tiny(tmp_path / "tiny", "llama")
    assert main(["eval", str(folder), "--tasks", "hellaswga"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err == ["error: unknown zero-shot task 'hellaswga'; did you mean 'hellaswag'?"]


def test_answer_longer_than_the_context_is_one_line(tmp_path):
    """lm-eval asserts that every answer fits the model's window (a 128-position model, a long PIQA solution): one
    line naming the tasks and the limit, not lm-eval's bare AssertionError."""
    from llmprune.evals.zeroshot import run_zeroshot

    _write_task(tmp_path, QUESTIONS[:1] + [("Say it at length", ["word " * 60, "no"], 1)])
    model, _ = tiny_model("llama")
    with pytest.raises(UserInputError, match=r"^tasks tiny_local_qa: an answer is longer than the model's context "
                                             r"\(128 tokens\)"):
        run_zeroshot(model, tiny_tokenizer(), ["tiny_local_qa"], include_path=[tmp_path])


@pytest.mark.parametrize("quiet", [True, False])
def test_eval_cli_quiet_hides_lm_eval_bars_and_logs(quiet, tmp_path, capfd, shared_data):
    """--quiet: stdout holds the table and stderr nothing (lm-eval's "Running loglikelihood requests" bar and the
    library log lines included); without it the bars are there, so the check below can see them."""
    import logging

    from tqdm import tqdm

    from llmprune.cli.main import main
    from tests.tiny_models import save_tiny

    folder = save_tiny(tmp_path / "tiny", "llama")
    init = vars(tqdm)["__init__"]
    levels = {name: logging.getLogger(name).level for name in ("transformers", "datasets")}
    capfd.readouterr()
    code = main(["eval", str(folder), "--tasks", "arc_easy", "--limit", "2"] + (["--quiet"] if quiet else []))
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "| arc_easy | local | 2 |" in out
    if quiet:
        assert err.strip() == "", err
        assert vars(tqdm)["__init__"] is init  # tqdm and the log levels are themselves again after the run
        assert {name: logging.getLogger(name).level for name in levels} == levels
    else:
        assert "Running loglikelihood requests" in err and "it/s" in err


def test_zeroshot_module_imports_no_lm_eval():
    code = "import sys, llmprune.evals.zeroshot, llmprune.evals.batch, llmprune.model_cards, llmprune.hub; " \
           "print(sorted(m for m in ('lm_eval', 'matplotlib', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_zeroshot_packed_checkpoint_same_answers_as_dense_twin(tmp_path, shared_data):
    """lm-eval runs the checkpoint as llmprune loads it (PackedLinear modules) and agrees with the same weights held
    dense; SmolLM2's version of this is in test_zeroshot_smollm2.py."""
    from llmprune import checkpoint
    from llmprune.evals.zeroshot import run_zeroshot
    from llmprune.packed_linear import PackedLinear
    from tests.packed_fixtures import pack_model_

    twin, _ = tiny_model("llama")
    layers = pack_model_(twin, "sparse24_int4")
    checkpoint.save(twin, tmp_path / "packed", layers=layers, tokenizer=tiny_tokenizer())
    packed, tokenizer, _ = checkpoint.load(tmp_path / "packed")
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == len(layers)
    dense = run_zeroshot(twin, tiny_tokenizer(), ["arc_easy"], limit=6, batch_size=4)
    compressed = run_zeroshot(packed, tokenizer, ["arc_easy"], limit=6, batch_size=4)
    assert compressed.answers == dense.answers and len(dense.answers["arc_easy"]) == 6
    for got, want in zip(compressed.loglikelihoods["arc_easy"], dense.loglikelihoods["arc_easy"]):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_lm_eval_command_line_wrapper_runs_a_packed_folder(tmp_path, shared_data):
    """README's lm-eval command line (also under ``accelerate launch -m``): from any directory, a packed folder by
    path and the offline task copies by name, scoring what ``run_zeroshot`` scores on ``llmprune.load``'s model."""
    import glob
    import os

    from llmprune import checkpoint
    from llmprune.evals.zeroshot import run_zeroshot
    from tests.packed_fixtures import pack_model_

    model, _ = tiny_model("llama")
    out = checkpoint.save(model, tmp_path / "packed", layers=pack_model_(model, "sparse24_int4"),
                          tokenizer=tiny_tokenizer())
    (tmp_path / "my_tasks").mkdir()  # the user's own --include_path: the task copies are still found beside it
    done = subprocess.run([sys.executable, "-m", "llmprune.evals.lm_eval_cli", "--model", "hf", "--model_args",
                           f"pretrained={out}", "--device", "cpu", "--tasks", "llmprune_arc_easy", "--limit", "6",
                           "--include_path", str(tmp_path / "my_tasks"), "--output_path", str(tmp_path / "results")],
                          cwd=tmp_path, check=True, capture_output=True, text=True,
                          env={**os.environ, "LLMPRUNE_DATA_DIR": str(shared_data)})
    assert "fatal: not a git repository" not in done.stderr
    (path,) = glob.glob(str(tmp_path / "results" / "**" / "results_*.json"), recursive=True)
    by_cli = json.loads(Path(path).read_text())["results"]["llmprune_arc_easy"]
    loaded, tokenizer, _ = checkpoint.load(out)
    (score,) = run_zeroshot(loaded, tokenizer, ["arc_easy"], limit=6).scores
    assert (by_cli["acc,none"], by_cli["acc_norm,none"]) == (score.acc, score.acc_norm)
