"""bfloat16 calibration forwards: float32 statistics and weights, results close to the float32 run."""
import pytest
import torch

from llmprune import Recipe, compress_, parse_sparsity
from llmprune.engine.sequential import run_sequential_
from tests.tiny_models import tiny_model


class _Recorder:
    """Identity task that records the statistics it is given."""

    def __init__(self):
        self.seen = {}

    def needs(self, name):
        return frozenset({"hessian", "input_sq_norms"})

    def __call__(self, name, weight, stats):
        self.seen[name] = (weight.dtype, stats)
        return weight


class _Calib:
    def __init__(self, ids):
        self.ids = ids


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_bf16_forwards_keep_float32_stats_close_to_float32_run(arch):
    ids = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(0))
    runs = {}
    for dtype in (None, torch.bfloat16):
        model, _ = tiny_model(arch)
        task = _Recorder()
        run_sequential_(model, ids, task, progress=False, forward_dtype=dtype, batch_size=2)
        runs[dtype] = task.seen
        assert all(p.dtype == torch.float32 for p in model.parameters())
    for name, (wdtype, stats) in runs[torch.bfloat16].items():
        ref = runs[None][name][1]
        assert wdtype == torch.float32 and stats.hessian.dtype == torch.float32
        torch.testing.assert_close(stats.hessian, ref.hessian, rtol=0.05, atol=0.05 * ref.hessian.abs().max().item())


def test_bf16_forwards_give_nearly_the_same_wanda_masks():
    ids = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(1))
    masks = {}
    for dtype in (None, torch.bfloat16):
        model, _ = tiny_model("llama")
        compress_(model, Recipe(method="wanda", sparsity=parse_sparsity("0.5")), _Calib(ids), progress=False,
                  forward_dtype=dtype)
        masks[dtype] = torch.cat([p.detach().flatten() != 0 for n, p in model.named_parameters() if "proj" in n])
    agreement = (masks[None] == masks[torch.bfloat16]).float().mean().item()
    assert agreement > 0.97, agreement
