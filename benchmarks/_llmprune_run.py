"""One llmprune run, measured the same way as the llm-compressor run (see compress.py)."""
import json
import resource
import sys
import time

from _rss import reset_peak, rss_mib


def main(model_dir, calib_path, label, sparsity, out_dir, forward_dtype, result_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from llmprune import Recipe, compress_, parse_sparsity
    from llmprune.data.calibration import CalibrationSet

    method, _, refine = label.partition("+")
    dtype = getattr(torch, forward_dtype) if forward_dtype != "float32" else None
    ids = load_file(calib_path)["ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    rss_loaded = rss_mib()
    reset_peak()
    recipe = Recipe(method=method, sparsity=parse_sparsity(sparsity), refine=refine or None)
    calib = CalibrationSet(ids=ids, sha256="benchmark", description={})
    start = time.perf_counter()
    report = compress_(model, recipe, calib, progress=False, forward_dtype=dtype)
    seconds = time.perf_counter() - start
    peak = rss_mib("VmHWM")
    peak_with_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.save_pretrained(out_dir)
    json.dump({"tool": "llmprune", "method": label, "sparsity": sparsity, "forward_dtype": forward_dtype,
               "seconds": seconds, "rss_loaded_mib": rss_loaded, "peak_rss_mib": peak, "peak_rss_with_load_mib": peak_with_load,
               "achieved_sparsity": report.achieved_sparsity(), "timings": report.timings},
              open(result_path, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:])
