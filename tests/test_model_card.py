"""Model cards: Hub metadata parsed back by huggingface_hub's own ModelCard, numbers checked against the shards."""
from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from llmprune.errors import CorruptCheckpoint
from llmprune.model_cards import render_card, rows_from_zeroshot, write_card
from tests.publish_fixtures import packed_checkpoint

ROWS = [{"name": "arc_easy", "metric": "acc", "value": 0.49, "stderr": 0.05, "samples": 100, "note": "lm-eval"},
        {"name": "wikitext2", "metric": "ppl", "value": 21.5, "stderr": None, "samples": 40, "note": "seqlen 2048"}]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return packed_checkpoint(tmp_path_factory.mktemp("card") / "out")


def _manifest(folder):
    return json.loads((folder / "llmprune.json").read_text())


def _stored_bits_per_param(folder, manifest) -> float:
    """Independent count: every tensor of each packed layer read from the shard itself (bias excluded)."""
    from safetensors import safe_open

    bits = params = 0
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
        for name, layer in manifest["layers"].items():
            for key in keys:
                if key.startswith(name + ".") and key != name + ".bias":
                    tensor = handle.get_tensor(key)
                    bits += 8 * tensor.numel() * tensor.element_size()
            params += layer["in_features"] * layer["out_features"]
    return bits / params


def test_model_card_front_matter_parses_with_huggingface_hub(packed):
    card = ModelCard(render_card(_manifest(packed), ROWS, repo_id="alice/tiny"))
    data = card.data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.library_name == "llmprune"
    assert {"llmprune", "sparse", "wanda", "2-4-sparsity", "4-bit", "format-sparse24_int4"} <= set(data.tags)
    got = [(r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type, r.metric_value) for r in data.eval_results]
    assert got == [("allenai/ai2_arc", "ARC-Easy", "test", "acc", 0.49),
                   ("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "ppl", 21.5)]
    assert data.model_name == "SmolLM2-135M-Instruct-wanda-2-4-rtn-w4g16"


def test_model_card_body_numbers_match_the_checkpoint(packed):
    manifest = _manifest(packed)
    text = render_card(manifest, ROWS, repo_id="alice/tiny")
    bits = _stored_bits_per_param(packed, manifest)
    # sparse24_int4, group 16: 2 kept of 4 at 4 bits + 2-bit index per kept value + fp32 scale/16 + zero/16.
    assert f"| stored bits per parameter (compressed Linear layers) | {bits:.3f} |" in text
    assert "| achieved sparsity (compressed Linear layers) | 0.5000 |" in text
    assert "| arc_easy | acc | 0.4900 | 0.0500 | 100 | lm-eval |" in text
    assert 'llmprune.load(snapshot_download("alice/tiny"))' in text
    assert "llmprune compress smollm2-135m --sparsity 2:4 --quant w4g16s --format sparse24_int4 -o out" in text
    assert "8 windows of 64 tokens (512 tokens) from `c4`" in text
    assert "dequantized to float32" in text  # the alias limitation


def test_model_card_dense_format_says_transformers_and_survives_a_bare_manifest():
    text = render_card({"format": "dense", "recipe": {"method": "magnitude", "sparsity": "0.5"}})
    assert "AutoModelForCausalLM.from_pretrained" in text and "No evaluation was recorded" in text
    assert ModelCard(text).data.library_name == "llmprune"


def test_write_card_from_folder_and_missing_manifest(packed, tmp_path):
    path = write_card(packed, results=ROWS)
    assert path == packed / "README.md" and ModelCard.load(path).data.eval_results[0].metric_value == 0.49
    assert not list(packed.glob(".*tmp"))
    with pytest.raises(CorruptCheckpoint, match="cannot read the manifest"):
        write_card(tmp_path)


def test_rows_from_zeroshot_result():
    from llmprune.evals.zeroshot import TaskScore, ZeroShotResult

    result = ZeroShotResult([TaskScore("piqa", "local", 50, 0.6, 0.07, 0.62, 0.069)])
    assert rows_from_zeroshot(result) == [
        {"name": "piqa", "metric": "acc", "value": 0.6, "stderr": 0.07, "samples": 50, "note": "lm-eval, local data",
         "partial": False},
        {"name": "piqa", "metric": "acc_norm", "value": 0.62, "stderr": 0.069, "samples": 50,
         "note": "lm-eval, local data", "partial": False}]
    result.config["limit"] = 50.0  # a --limit run says so, and stays out of model-index
    assert {(r["note"], r["partial"]) for r in rows_from_zeroshot(result)} == {("lm-eval, local data, limit 50",
                                                                                True)}


@pytest.mark.parametrize("recipe, method_row, damp_row", [
    ({"method": "magnitude", "sparsity": "0.5", "damp": 0.01, "block": 128,
      "quant": {"method": "rtn", "bits": 4, "group": 16}}, "| method | magnitude |", False),
    ({"method": "sparsegpt", "sparsity": "2:4", "damp": 0.01, "block": 128}, "| method | sparsegpt |", True),
    ({"method": "wanda", "sparsity": None, "damp": 0.01, "block": 128,
      "quant": {"method": "gptq", "bits": 4, "group": 16}}, "| method | none (no pruning) |", True),
])
def test_model_card_shows_only_the_settings_the_recipe_used(recipe, method_row, damp_row):
    """A quant-only run names no pruning method (the recipe holds the default), and dampening / block appear only
    for SparseGPT, GQSA and GPTQ, which read them (SpQR has its own row)."""
    text = render_card({"format": "dense", "recipe": recipe})
    assert method_row in text
    assert ("| dampening / block | 0.01 / 128 |" in text) == damp_row


@pytest.mark.parametrize("options, quant_options, settings", [
    ({}, {}, "dampening 1.0, outlier threshold 0.2, 3-bit statistics over groups of 16 rows, act-order on"),
    ({"spqr_damp": "0.5", "act_order": "false", "stat_bits": "2.0"}, {"outlier_threshold": 1.0},
     "dampening 0.5, outlier threshold 1.0, 2-bit statistics over groups of 16 rows, act-order off"),
])
def test_model_card_of_spqr_shows_the_settings_spqr_ran_with(options, quant_options, settings):
    """SpQR reads its own dampening (not --damp) and a per-row group means its default g16; a quant-only run
    names no pruning method in its summary line."""
    recipe = {"method": "wanda", "sparsity": None, "damp": 0.01, "block": 128, "options": options,
              "quant": {"method": "spqr", "bits": 3, "group": 0, "options": quant_options}}
    text = render_card({"format": "spqr", "recipe": recipe})
    assert f"| SpQR settings | {settings} |" in text
    assert "dampening / block" not in text and "wanda" not in text
    assert "**spqr** 3-bit weights (group 16, asymmetric)" in text
    assert "| quantization | spqr w3g16 |" in text


def test_model_card_names_the_export_folder_beside_the_checkpoint(packed):
    """The export is a sibling folder (``OUT.compressed-tensors``), not a subfolder the Hub repository holds."""
    manifest = {**_manifest(packed), "job": {**_manifest(packed)["job"], "export": "compressed-tensors"},
                "export": {"format": "compressed-tensors", "path": "/runs/out.compressed-tensors"}}
    text = render_card(manifest, repo_id="alice/tiny")
    assert "`out.compressed-tensors`, beside the llmprune folder" in text
    assert "vllm serve out.compressed-tensors" in text
    assert "compressed-tensors/" not in text


def test_model_index_tells_two_runs_of_one_benchmark_apart(packed):
    """The same set at two settings (seqlen, dtype) gives two model-index entries; their metric names carry the
    settings, as the card's table notes do."""
    rows = [{"name": "wikitext2", "metric": "ppl", "value": 21.5, "stderr": None, "samples": 4,
             "note": "seqlen 2048"},
            {"name": "wikitext2", "metric": "ppl", "value": 21.9, "stderr": None, "samples": 4,
             "note": "seqlen 2048, bfloat16"}]
    names = [r.metric_name for r in ModelCard(render_card(_manifest(packed), rows)).data.eval_results]
    assert names == ["ppl (seqlen 2048)", "ppl (seqlen 2048, bfloat16)"]


def test_recording_results_writes_no_card_for_a_folder_without_a_recipe(tmp_path):
    """``llmprune.save`` without a recipe writes no card; recording an evaluation keeps it that way (a card would
    describe a compression run that never happened), and a failed write changes neither file."""
    import llmprune
    from llmprune.model_cards import record_results
    from tests.tiny_models import tiny_model

    model, _ = tiny_model("llama")
    folder = llmprune.save(model, tmp_path / "plain")
    assert record_results(folder, ROWS) == [folder / "llmprune.json"] and not (folder / "README.md").exists()
    assert _manifest(folder)["evaluations"] == ROWS
    before = (folder / "llmprune.json").read_text()
    (folder / ".llmprune.json.tmp").mkdir()  # the staged file cannot be written
    with pytest.raises(OSError):
        record_results(folder, [{**ROWS[0], "value": 0.1}])
    assert (folder / "llmprune.json").read_text() == before


def test_chained_run_card_names_the_base_model_and_the_earlier_runs():
    """A model quantized from a folder an earlier run pruned from a Hub model: the card's base model is the Hub one
    (not the local folder), it says what the earlier runs did, and the Hub tags say it is pruned."""
    hub = {"spec": "org/base", "kind": "hub", "path": "org/base"}
    pruned = {"recipe": {"method": "wanda", "sparsity": "2:4", "quant": None},
              "calibration": {"source": "c4", "nsamples": 8, "seqlen": 64, "seed": 0}, "model": hub}
    refined = {"recipe": {"method": "magnitude", "sparsity": "2:4", "quant": None}, "calibration": None,
               "model": {"spec": "w24", "kind": "folder", "path": "/x/w24", "parent": pruned}}
    manifest = {"model": {"spec": "m24", "kind": "folder", "path": "/x/m24", "parent": refined}, "format": "int4",
                "recipe": {"method": "wanda", "sparsity": None, "quant": {"method": "rtn", "bits": 4, "group": 32}},
                "report": {"achieved_sparsity": 0.5}}
    card = ModelCard(render_card(manifest))
    assert card.data.base_model == "org/base" and {"pruned", "wanda", "2-4-sparsity"} <= set(card.data.tags)
    assert ("nearest first: magnitude 2:4; then wanda 2:4; calibrated on c4 (8 x 64 tokens)." in card.text)
    assert "| base model | org/base (through 2 earlier runs) |" in card.text
    assert "| method | none (no pruning in this run) |" in card.text


def test_zero_shot_note_is_the_same_for_num_fewshot_zero_and_none():
    """--num-fewshot 0 is the zero-shot default: one measurement, one note (two rows of equal values otherwise)."""
    scores = [{"task": "arc_easy", "acc": 0.5, "source": "local"}]
    notes = [rows_from_zeroshot({"scores": scores, "config": {"num_fewshot": k}})[0]["note"] for k in (None, 0, 5)]
    assert notes[0] == notes[1] == "lm-eval, local data" and notes[2] == "lm-eval, local data, num_fewshot 5"
