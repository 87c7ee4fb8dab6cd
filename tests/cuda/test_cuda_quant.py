"""The CUDA quant_matmul and fused MoE op against the plain-torch references, on a GPU. Skipped
where none is present. The CUDA kernels keep activations in fp32, so only the weight format
separates them from the reference: tolerances are float-accumulation sized."""

import pytest
import torch

from moeweave.ops import bf16_matmul, moe_experts, quant_matmul, reference
from moeweave.quant import ExpertTable, dequantize, quantize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _relative(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(("m", "n", "k", "group"), [(1, 7, 19, 32), (4, 111, 256, 64), (19, 300, 512, None)])
def test_quant_matmul(bits, sym, m, n, k, group):
    w, x = torch.randn(n, k), torch.randn(m, k)
    qw = quantize(w, bits=bits, group_size=group, sym=sym).to("cuda")
    y = quant_matmul(x.cuda(), qw)
    assert y.is_cuda and y.shape == (m, n)
    assert _relative(y, reference.quant_matmul(x.cuda(), qw)) < 1e-4


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("m", [1, 2, 5, 8, 21])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quant_matmul_packed_path(bits, m, x_dtype, scale_dtype):
    """k a whole number of groups and aligned operands: the 16-byte-load path, for every block
    of activation rows (1, 2, 4, 8 and a ragged last block) and an odd number of units per tile."""
    n, k = 200, 1056
    for sym in (True, False):
        qw = quantize(torch.randn(n, k), bits=bits, group_size=32, sym=sym, scale_dtype=scale_dtype).to(
            "cuda"
        )
        x = torch.randn(m, k, device="cuda").to(x_dtype)
        # bf16 activations give bf16 outputs: sums a rounding apart may land one bf16 step apart.
        tolerance = 1e-4 if x_dtype == torch.float32 else 4e-3
        assert _relative(quant_matmul(x, qw), reference.quant_matmul(x, qw)) < tolerance


def test_quant_matmul_misaligned_activations():
    """A view that starts 4 bytes into its storage takes the per-element path, with the same result."""
    qw = quantize(torch.randn(64, 256), bits=4, group_size=64).to("cuda")
    x = torch.randn(3 * 256 + 1, device="cuda")[1:].view(3, 256)
    assert _relative(quant_matmul(x, qw), reference.quant_matmul(x, qw)) < 1e-4


def test_bf16_matrix_and_activations():
    w, x = torch.randn(40, 96).bfloat16().cuda(), torch.randn(5, 96).bfloat16().cuda()
    table = ExpertTable([(w, w, torch.randn(96, 40).bfloat16().cuda())])
    ids, weights = torch.zeros(5, 1, dtype=torch.int32, device="cuda"), torch.ones(5, 1, device="cuda")
    assert (
        _relative(moe_experts(x, ids, weights, table), reference.moe_experts(x, ids, weights, table)) < 1e-2
    )


@pytest.mark.parametrize("tokens", [1, 19])
def test_moe_experts_mixed_formats(tokens):
    hidden, inter, num_experts, top_k = 128, 96, 8, 2
    experts = []
    for e in range(num_experts):
        ws = [torch.randn(inter, hidden) / hidden**0.5, torch.randn(inter, hidden) / hidden**0.5,
              torch.randn(hidden, inter) / inter**0.5]  # fmt: skip
        bits = (2, 3, 4, 8)[e % 4]
        experts.append(tuple(quantize(w, bits=bits, group_size=32).to("cuda") for w in ws))
    table = ExpertTable(experts)
    weights, ids = torch.rand(tokens, num_experts).softmax(-1).topk(top_k, dim=-1)
    x = torch.randn(tokens, hidden)
    y = moe_experts(x.cuda(), ids.to(torch.int32).cuda(), weights.cuda(), table)
    expected = reference.moe_experts(x.cuda(), ids.cuda(), weights.cuda(), table)
    assert _relative(y, expected) < 1e-4


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_quant_matmul_dx_is_dy_times_the_dequantised_weight(bits):
    w = torch.randn(300, 96)
    weight = w.bfloat16().cuda() if bits == 16 else quantize(w, bits=bits, group_size=32).to("cuda")
    dense = weight.float() if bits == 16 else dequantize(weight)
    x = torch.randn(7, 96, device="cuda", requires_grad=True)
    y = bf16_matmul(x, weight) if bits == 16 else quant_matmul(x, weight)
    dy = torch.randn_like(y)
    y.backward(dy)
    assert _relative(x.grad, dy @ dense.cuda()) < 1e-5


def test_moe_experts_gradients_match_autograd_through_the_dequantised_experts():
    generator = torch.Generator().manual_seed(0)
    experts = [tuple(quantize(torch.randn(*s, generator=generator) / 8, bits=4, group_size=32).to("cuda")
                     for s in ((64, 128), (64, 128), (128, 64))) for _ in range(6)]  # fmt: skip
    table = ExpertTable(experts)
    weights, ids = torch.rand(11, 6, generator=generator).softmax(-1).topk(2, dim=-1)
    ids, weights = ids.to(torch.int32).cuda(), weights.cuda()
    x, dy = torch.randn(11, 128, device="cuda"), torch.randn(11, 128, device="cuda")
    got = [x.clone().requires_grad_(), weights.clone().requires_grad_()]
    moe_experts(got[0], ids, got[1], table).backward(dy)
    want = [x.clone().requires_grad_(), weights.clone().requires_grad_()]
    reference.moe_experts(want[0], ids, want[1], table).backward(dy)
    for g, e in zip(got, want, strict=True):
        assert _relative(g.grad, e.grad) < 1e-4
