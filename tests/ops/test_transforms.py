"""Every public op under torch.compile(fullgraph=True) — forward and backward — and torch.vmap,
against the same op called eagerly (compile) or slice by slice (vmap)."""

import pytest
import torch

import moeweave.ops as ops
from moeweave.quant import ExpertTable, quantize

_generator = torch.Generator().manual_seed(17)


def _randn(*shape):
    return torch.randn(*shape, generator=_generator)


QW = quantize(_randn(24, 64), bits=4, group_size=32, sym=False)
W_BF16 = _randn(24, 64).bfloat16()
TABLE = ExpertTable(
    [
        tuple(quantize(_randn(*s) / 8, bits=4, group_size=32) for s in ((32, 64), (32, 64), (64, 32)))
        for _ in range(4)
    ]
)
IDS = torch.tensor([[0, 2], [3, 1], [2, 2], [1, 0], [3, 0]], dtype=torch.int32)
MASK = torch.rand(2, 3, 6, generator=_generator) > 0.3
REMAP = torch.tensor([[0, 1, 2, 3], [4, 1, 5, 3]], dtype=torch.int32)
ADAPTER = torch.tensor([-1, 0, 0, -1, 0], dtype=torch.int32)

# name -> (function of the differentiable inputs, those inputs); every public op.
CASES = {
    "silu_mul": (ops.silu_mul, [_randn(5, 33), _randn(5, 33)]),
    "rms_norm": (lambda x, w: ops.rms_norm(x, w, 1e-6), [_randn(5, 40), _randn(40)]),
    "rope": (ops.rope, [_randn(2, 5, 3, 16), _randn(5, 16), _randn(5, 16)]),
    "attention": (lambda q, k, v: ops.attention(q, k, v, MASK), [_randn(2, 4, 3, 8), _randn(2, 2, 6, 8), _randn(2, 2, 6, 8)]),
    "quant_matmul": (lambda x: ops.quant_matmul(x, QW), [_randn(5, 64)]),
    "bf16_matmul": (lambda x: ops.bf16_matmul(x, W_BF16), [_randn(5, 64)]),
    "moe_experts": (lambda x, w: ops.moe_experts(x, IDS, w, TABLE), [_randn(5, 64), torch.rand(5, 2, generator=_generator)]),
}  # fmt: skip


def test_every_public_op_has_a_case():
    assert set(CASES) | {"reroute", "reference"} >= set(ops.__all__)


@pytest.mark.parametrize("name", sorted(CASES))
def test_compile_fullgraph_forward_and_backward(name):
    fn, inputs = CASES[name]
    eager_inputs = [t.clone().requires_grad_() for t in inputs]
    compiled_inputs = [t.clone().requires_grad_() for t in inputs]
    expected = fn(*eager_inputs)
    got = torch.compile(fn, fullgraph=True)(*compiled_inputs)
    torch.testing.assert_close(got, expected)
    grad = torch.ones_like(expected)
    expected.backward(grad)
    got.backward(grad)
    for a, b in zip(compiled_inputs, eager_inputs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_compile_fullgraph_reroute():
    ids = IDS.clone()
    got = torch.compile(lambda i, a: ops.reroute(i, a, REMAP), fullgraph=True)(ids, ADAPTER)
    torch.testing.assert_close(got, ops.reroute(ids, ADAPTER, REMAP))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batched", ["first", "all"])
def test_vmap_matches_the_op_slice_by_slice(name, batched):
    """Batching only the first input folds the batch into the op's rows; batching every input
    also batches what the rows share (weights, cos/sin, k/v), which runs slice by slice."""
    fn, inputs = CASES[name]
    count = 3
    stacks = [torch.stack([t * (1 + 0.1 * b) for b in range(count)]) for t in inputs]
    in_dims = tuple(0 if batched == "all" or i == 0 else None for i in range(len(inputs)))
    args = [s if d == 0 else t for s, t, d in zip(stacks, inputs, in_dims, strict=True)]
    got = torch.vmap(fn, in_dims=in_dims)(*args)
    expected = torch.stack(
        [fn(*(a[b] if d == 0 else a for a, d in zip(args, in_dims, strict=True))) for b in range(count)]
    )
    torch.testing.assert_close(got, expected)


def test_vmap_reroute():
    ids = torch.stack([IDS, IDS.flip(0)])
    got = torch.vmap(lambda i: ops.reroute(i, ADAPTER, REMAP))(ids)
    torch.testing.assert_close(got, torch.stack([ops.reroute(i, ADAPTER, REMAP) for i in ids]))
