"""One llm-compressor ``oneshot`` run, measured (runs inside llm-compressor's own virtualenv; see compress.py).

Usage: python _llmcompressor_run.py MODEL_DIR CALIB.safetensors METHOD SPARSITY OUT_DIR RESULT.json
"""
import json
import resource
import sys
import time

from _rss import reset_peak, rss_mib


def main(model_dir, calib_path, method, sparsity, out_dir, result_path):
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(int(torch.get_num_threads()))
    ids = load_file(calib_path)["ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rss_loaded = rss_mib()
    reset_peak()
    if ":" in sparsity:
        n, m = (int(x) for x in sparsity.split(":"))
        kwargs = dict(sparsity=1 - n / m, mask_structure=f"{m - n}:{m}")  # llm-compressor's N:M counts pruned
    else:
        kwargs = dict(sparsity=float(sparsity), mask_structure="0:0")
    modifier_cls = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}[method]
    # lm_head is tied to the embeddings in SmolLM2: ignore it, or "Linear" targets prune it too.
    modifier = modifier_cls(targets=["Linear"], ignore=["lm_head"], **kwargs)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    start = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=modifier, num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
    seconds = time.perf_counter() - start
    peak = rss_mib("VmHWM")
    peak_with_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.save_pretrained(out_dir, save_compressed=False)
    zeros = sum(int((m.weight == 0).sum()) for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    total = sum(m.weight.numel() for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    json.dump({"tool": "llm-compressor", "method": method, "sparsity": sparsity, "seconds": seconds,
               "rss_loaded_mib": rss_loaded, "peak_rss_mib": peak, "peak_rss_with_load_mib": peak_with_load, "achieved_sparsity": zeros / total},
              open(result_path, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:])
