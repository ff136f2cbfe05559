"""torch.compile over packed layers: a kernel call is one opaque node (``llmprune::packed_matmul``), so a decoder
compiles as one graph with no break per Linear, and the compiled model computes what the eager kernels compute.

The kernels run under Triton's interpreter on CPU tensors here; dispatch is told that CPU inputs may take them."""
from __future__ import annotations

import pytest
import torch

from llmprune import dispatch
from llmprune.packed_linear import PackedLinear

OP = torch.ops.llmprune.packed_matmul.default


def graphs_of(fn, *args):
    """(output, [FX graphs]) of ``torch.compile(fn, fullgraph=True)`` on ``args`` (fullgraph: a break fails)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.graph)
        return gm.forward

    return torch.compile(fn, backend=backend, fullgraph=True)(*args), graphs


def ops_in(graphs) -> int:
    return sum(node.target is OP for graph in graphs for node in graph.nodes)


@pytest.mark.parametrize("fmt", ["int4", "sparse24_int4", "group_sparse_int4", "spqr", "sparse24"])
def test_compiled_packed_linear_is_one_graph_with_the_kernel_op(cpu_kernels, fmt):
    from llmprune.evals.random_models import random_packed_linear

    module = random_packed_linear(fmt, 48, 256, "cpu", torch.Generator().manual_seed(1), bias=torch.randn(48))
    x = torch.randn(3, 256).half()
    want = module(x)
    assert module.kernel_path == "triton"
    got, graphs = graphs_of(module, x)
    assert len(graphs) == 1 and ops_in(graphs) == 1
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_compiled_tiny_llama_has_no_graph_break_and_one_op_per_linear(cpu_kernels):
    from llmprune.evals.random_models import build_random

    model = build_random("tiny", "int4", "cpu", "float16")
    model.config.use_cache = False
    ids = torch.randint(0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits
        got, graphs = graphs_of(lambda t: model(t).logits, ids)
    linears = sum(isinstance(m, PackedLinear) for m in model.modules())
    assert linears == 14 and len(graphs) == 1 and ops_in(graphs) == linears
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert set(dispatch.kernel_paths(model).values()) == {"triton"}


def test_fake_kernel_op_gives_shape_and_dtype_for_aot_tracing(cpu_kernels):
    """aot_eager traces with fake tensors, so the op's registered fake must match the real output."""
    from llmprune.evals.random_models import random_qweight

    module = PackedLinear.from_quantized(random_qweight("int4", 40, 128, "cpu", torch.Generator().manual_seed(2)),
                                        "int4", dtype="bfloat16")
    x = torch.randn(2, 7, 128).bfloat16()
    got = torch.compile(module, backend="aot_eager", fullgraph=True)(x)
    assert got.shape == (2, 7, 40) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got, module(x), rtol=0, atol=0)


def test_eager_calls_skip_the_op_dispatcher(cpu_kernels, monkeypatch):
    """The custom op's dispatcher costs microseconds per call; eager forwards call the launcher directly."""
    from llmprune.evals.random_models import random_qweight

    module = PackedLinear.from_quantized(random_qweight("int4", 16, 128, "cpu", torch.Generator().manual_seed(3)),
                                        "int4")
    monkeypatch.setattr(dispatch, "packed_matmul", lambda *a: pytest.fail("eager call went through the op"))
    module(torch.randn(1, 128).half())
    assert module.kernel_path == "triton"


def test_compiled_static_decode_step_runs_the_kernels_without_graph_breaks(cpu_kernels):
    """The ``static+compile`` variant of ``llmprune bench``: a whole decode step (static KV cache, every decoder
    Linear a kernel call) traces with no graph break and decodes the greedy tokens of eager ``generate``."""
    from torch._dynamo.utils import counters

    from llmprune.evals.bench import greedy
    from llmprune.evals.random_models import build_random
    from llmprune.evals.static_decode import StaticDecoder

    model = build_random("tiny", "int4", "cpu", "float32", seed=5)
    prompt = torch.randint(0, model.config.vocab_size, (1, 3), generator=torch.Generator().manual_seed(5))
    counters.clear()
    decoder = StaticDecoder(model, 1, max_len=8, mode="compile", backend="eager")
    decoder.prepare(prompt, warmup=1)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert torch.equal(decoder.generate(prompt, 4), greedy(model, prompt, 4))
    assert set(dispatch.kernel_paths(model).values()) == {"triton"}
