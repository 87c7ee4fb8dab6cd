"""Gradients of every differentiable op against plain torch: the quantised ops' dx (and the MoE
stage's d(topk_weights)) against autograd through dequantised weights, the decode-step ops
against autograd through their plain-torch twins, the backward formulas by gradcheck in float64,
and torch.library.opcheck with inputs that need gradients."""

import pytest
import torch
from expert_tables import random_routing, random_table

from moeweave.ops import (
    attention,
    bf16_matmul,
    moe_experts,
    quant_matmul,
    reference,
    rms_norm,
    rope,
    silu_mul,
)
from moeweave.ops.moe_experts import backward_by_expert
from moeweave.quant import dequantize, quantize


def _relative(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


def _leaf(t, dtype=None):
    return t.detach().to(dtype or t.dtype).clone().requires_grad_()


def _grads(fn, inputs, grad):
    """Gradients of <fn(*inputs), grad> with respect to every input that needs one."""
    out = fn(*inputs)
    return torch.autograd.grad(out, [t for t in inputs if t.requires_grad], grad.to(out.dtype))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize(
    ("m", "n", "k"), [(1, 16, 32), (5, 37, 70), (9, 130, 257), (7, 300, 96)]
)  # 300 rows: several panel blocks
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quant_matmul_dx_is_dy_times_the_dequantised_weight(isa, bits, m, n, k, dtype):
    generator = torch.Generator().manual_seed(bits * 1000 + k)
    qw = quantize(torch.randn(n, k, generator=generator), bits=bits, group_size=32, sym=bits >= 4)
    x = _leaf(torch.randn(m, k, generator=generator), dtype)
    dy = torch.randn(m, n, generator=generator)
    (dx,) = _grads(lambda x: quant_matmul(x, qw), [x], dy)
    expected = dy @ dequantize(qw)  # fp32 oracle, exact activations
    assert dx.dtype == dtype
    assert _relative(dx, expected) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_bf16_matmul_dx_is_dy_times_the_weight(isa):
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(45, 77, generator=generator).bfloat16()
    x = _leaf(torch.randn(6, 77, generator=generator))
    dy = torch.randn(6, 45, generator=generator)
    (dx,) = _grads(lambda x: bf16_matmul(x, w), [x], dy)
    assert _relative(dx, dy @ w.float()) < 1e-5


# bf16 experts compute with exact fp32 activations, so the fused backward meets the oracle to
# rounding; packed experts see int8 activations at the gate/up and down inputs (forward and
# recomputation alike), ~1-2 % of the gradient's norm.
@pytest.mark.parametrize(
    ("formats", "tolerance"), [((16,), 1e-5), ((4,), 4e-2), ((2, 3, 8, 16), 4e-2)], ids=str
)
@pytest.mark.parametrize(("tokens", "top_k"), [(1, 1), (7, 2), (33, 4)])
def test_moe_experts_gradients_match_autograd_through_the_dequantised_experts(
    isa, formats, tolerance, tokens, top_k
):
    table = random_table(6, 96, 64, formats)
    ids, weights = random_routing(tokens, top_k, len(table))
    x = torch.randn(tokens, table.hidden_size, generator=torch.Generator().manual_seed(2))
    dy = torch.randn(tokens, table.hidden_size, generator=torch.Generator().manual_seed(5))
    got = _grads(lambda x, w: moe_experts(x, ids, w, table), [_leaf(x), _leaf(weights)], dy)
    expected = _grads(lambda x, w: reference.moe_experts(x, ids, w, table), [_leaf(x), _leaf(weights)], dy)
    for g, e in zip(got, expected, strict=True):
        assert _relative(g, e) < tolerance


def test_moe_experts_gradients_in_bfloat16_keep_the_input_dtypes(isa):
    table = random_table(6, 96, 64, (4,))
    ids, weights = random_routing(5, 2, len(table))
    x = _leaf(torch.randn(5, table.hidden_size), torch.bfloat16)
    w = _leaf(weights, torch.bfloat16)
    moe_experts(x, ids, w, table).float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    expected = _grads(lambda x, w: reference.moe_experts(x, ids, w, table), [_leaf(x, torch.float32), _leaf(w, torch.float32)], torch.ones(5, table.hidden_size))  # fmt: skip
    assert _relative(x.grad, expected[0]) < 5e-2 and _relative(w.grad, expected[1]) < 5e-2


def _decode_cases():
    generator = torch.Generator().manual_seed(7)
    mask = torch.rand(2, 3, 6, generator=generator) > 0.3
    mask[0, 1] = False  # a query that may attend to nothing
    cache = torch.randn(2, 2, 9, 8, generator=generator)  # k and v are views into a longer cache
    return {
        "rms_norm": (lambda x, w: rms_norm(x, w, 1e-6), lambda x, w: reference.rms_norm(x, w, 1e-6),
                     [torch.randn(3, 5, 40, generator=generator), torch.randn(40, generator=generator)]),
        "rope": (rope, reference.rope,
                 [torch.randn(2, 5, 3, 16, generator=generator), torch.randn(5, 16, generator=generator),
                  torch.randn(5, 16, generator=generator)]),
        "attention": (lambda q, k, v: attention(q, k, v, mask, 0.3),
                      lambda q, k, v: reference.attention(q, k, v, mask, 0.3),
                      [torch.randn(2, 4, 3, 8, generator=generator), cache[:, :, :6], cache[:, :, 3:] * 2]),
        "silu_mul": (silu_mul, reference.silu_mul,
                     [torch.randn(4, 33, generator=generator), torch.randn(4, 33, generator=generator)]),
    }  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["rms_norm", "rope", "attention", "silu_mul"])
def test_decode_op_gradients_match_autograd_through_the_twin(isa, name, dtype):
    op, twin, inputs = _decode_cases()[name]
    dy = torch.randn_like(twin(*inputs).float(), dtype=torch.float32)
    got = _grads(op, [_leaf(t, dtype) for t in inputs], dy)
    expected = _grads(twin, [_leaf(t, torch.float32) for t in inputs], dy)
    assert len(got) == len(inputs)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == dtype
        # fp32: the same formulas up to summation order; bf16: the inputs' and outputs' roundings.
        assert _relative(g, e) < (1e-5 if dtype == torch.float32 else 3e-2)


def _function(forward, backward):
    """An autograd function: forward the twin, backward the op's registered formula."""

    class Checked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            ctx.save_for_backward(*inputs)
            return forward(*inputs)

        @staticmethod
        def backward(ctx, grad):
            return backward(grad, *ctx.saved_tensors)

    return Checked.apply


def test_backward_formulas_pass_gradcheck_in_float64():
    generator = torch.Generator().manual_seed(11)
    mask = torch.rand(1, 2, 5, generator=generator) > 0.3
    mask[0, 0] = False
    cases = [
        (_function(lambda x, w: reference.rms_norm(x, w, 1e-6),
                   lambda g, x, w: reference.rms_norm_backward(g, x, w, 1e-6)),
         [torch.randn(3, 6, generator=generator), torch.randn(6, generator=generator)]),
        (_function(reference.rope, reference.rope_backward),
         [torch.randn(1, 3, 2, 4, generator=generator), torch.randn(3, 4, generator=generator),
          torch.randn(3, 4, generator=generator)]),
        (_function(lambda q, k, v: reference.attention(q, k, v, mask, 0.7),
                   lambda g, q, k, v: reference.attention_backward(g, q, k, v, mask, 0.7)),
         [torch.randn(1, 4, 2, 3, generator=generator), torch.randn(1, 2, 5, 3, generator=generator),
          torch.randn(1, 2, 5, 3, generator=generator)]),
    ]  # fmt: skip
    for fn, inputs in cases:
        assert torch.autograd.gradcheck(fn, [_leaf(t, torch.float64) for t in inputs])


def test_opcheck_with_inputs_that_need_gradients():
    generator = torch.Generator().manual_seed(13)
    qw = quantize(torch.randn(40, 96, generator=generator), bits=4, group_size=32, sym=False)
    table = random_table(6, 96, 64, (4, 16))
    ids, weights = random_routing(5, 2, len(table))
    mask = torch.rand(2, 3, 6, generator=generator) > 0.3
    grad = lambda *shape: torch.randn(*shape, generator=generator).requires_grad_()  # noqa: E731
    cases = [
        (torch.ops.moeweave.quant_matmul.default,
         (grad(3, 96), qw.packed, qw.scales, qw.zeros, qw.n, qw.k, qw.bits, qw.group_size)),
        (torch.ops.moeweave.moe_experts.default, (grad(5, 96), ids, weights.requires_grad_(), table.table)),
        (torch.ops.moeweave.rms_norm.default, (grad(4, 40), grad(40), 1e-6)),
        (torch.ops.moeweave.rope.default, (grad(2, 5, 3, 16), grad(5, 16), grad(5, 16))),
        (torch.ops.moeweave.attention.default, (grad(2, 4, 3, 8), grad(2, 2, 6, 8), grad(2, 2, 6, 8), mask, 0.3)),
        (torch.ops.moeweave.silu_mul.default, (grad(4, 33), grad(4, 33))),
    ]  # fmt: skip
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("formats", [(16,), (4,), (2, 3, 8, 16)], ids=str)
def test_the_expert_by_expert_backward_matches_autograd_through_the_dequantised_experts(isa, formats):
    """The CUDA path's backward (one expert at a time on quant_matmul and its transposed product),
    run here on CPU tensors."""
    table = random_table(6, 96, 64, formats)
    ids, weights = random_routing(9, 2, len(table))
    x = torch.randn(9, table.hidden_size, generator=torch.Generator().manual_seed(2))
    dy = torch.randn(9, table.hidden_size, generator=torch.Generator().manual_seed(5))
    got = backward_by_expert(x, ids, weights, table, dy)
    expected = _grads(lambda x, w: reference.moe_experts(x, ids, w, table), [_leaf(x), _leaf(weights)], dy)
    for g, e in zip(got, expected, strict=True):
        assert _relative(g, e) < (1e-5 if formats == (16,) else 4e-2)
