"""The CUDA quant_matmul and fused MoE op against the plain-torch references, on a GPU. Skipped
where none is present. The CUDA kernels keep activations in fp32, so only the weight format
separates them from the reference: tolerances are float-accumulation sized. Wide products take
the dequantise + cuBLAS path instead (moeweave.ops.prefill_gemm), tested at bf16 tolerances."""

import pytest
import torch

from moeweave import _native
from moeweave.ops import bf16_matmul, moe_experts, prefill_gemm, quant_matmul, reference
from moeweave.quant import ExpertTable, dequantize, quantize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# x and W rounded to bf16 (2^-9 each) and y rounded to bf16: a relative Frobenius error of a few
# 0.1 %; 1 % leaves room for small shapes.
BF16_TOLERANCE = 0.01


@pytest.fixture
def kernel_only(monkeypatch):
    """Every row count on the CUDA kernel, none on cuBLAS."""
    monkeypatch.setattr(prefill_gemm, "CUDA_GEMM_ROWS", 1 << 30)
    monkeypatch.setattr(prefill_gemm, "CUDA_GEMM_ROWS_INT8", 1 << 30)


def _relative(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(("m", "n", "k", "group"), [(1, 7, 19, 32), (4, 111, 256, 64), (19, 300, 512, None)])
def test_quant_matmul(kernel_only, bits, sym, m, n, k, group):
    w, x = torch.randn(n, k), torch.randn(m, k)
    qw = quantize(w, bits=bits, group_size=group, sym=sym).to("cuda")
    y = quant_matmul(x.cuda(), qw)
    assert y.is_cuda and y.shape == (m, n)
    assert _relative(y, reference.quant_matmul(x.cuda(), qw)) < 1e-4


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("m", [1, 2, 5, 8, 21])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quant_matmul_packed_path(kernel_only, bits, m, x_dtype, scale_dtype):
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


def test_quant_matmul_misaligned_activations(kernel_only):
    """A view that starts 4 bytes into its storage takes the per-element path, with the same result."""
    qw = quantize(torch.randn(64, 256), bits=4, group_size=64).to("cuda")
    x = torch.randn(3 * 256 + 1, device="cuda")[1:].view(3, 256)
    assert _relative(quant_matmul(x, qw), reference.quant_matmul(x, qw)) < 1e-4


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [32, 64, None])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dequantize_rows_matches_torch(bits, sym, group, scale_dtype):
    """The CUDA dequantisation equals the plain-torch dequantize rounded to bf16, bit for bit, over
    whole and partial row ranges; k = 77 and 200 take the element-wise and the vector stores."""
    generator = torch.Generator().manual_seed(bits * 10 + sym)
    native = _native.module_for("cuda")
    for n, k in [(45, 200), (16, 64), (130, 77)]:
        qw = quantize(torch.randn(n, k, generator=generator), bits=bits, group_size=group, sym=sym,
                      scale_dtype=scale_dtype)  # fmt: skip
        expected = dequantize(qw).bfloat16()  # [n, k]
        on_gpu = qw.to("cuda")
        for begin, rows in [(0, n), (16, n - 16), (0, 16)]:
            out = torch.full((rows, k), float("nan"), dtype=torch.bfloat16, device="cuda")
            prefill_gemm.dequantize_rows(native, on_gpu, begin, out)
            assert torch.equal(out.cpu(), expected[begin : begin + rows])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "k", "group"), [(200, 1056, 32), (75, 77, None)])
@pytest.mark.parametrize("panel_rows", [None, 32])
def test_wide_products_run_on_cublas(monkeypatch, bits, sym, x_dtype, n, k, group, panel_rows):
    """From cuda_gemm_rows(bits) rows on, the product is a dequantised bf16 GEMM, with bf16 accuracy;
    in one panel or in panels of 32 rows and a ragged last one."""
    if panel_rows:
        monkeypatch.setattr(prefill_gemm, "CUDA_PANEL_BYTES", 2 * panel_rows * k)
    calls = []
    original = prefill_gemm.dequantized_gemm
    monkeypatch.setattr(prefill_gemm, "dequantized_gemm", lambda *a: calls.append(1) or original(*a))
    qw = quantize(torch.randn(n, k), bits=bits, group_size=group, sym=sym).to("cuda")
    threshold = prefill_gemm.cuda_gemm_rows(bits)
    for m in (threshold, 300):
        x = torch.randn(m, k, device="cuda").to(x_dtype)
        y = quant_matmul(x, qw)
        assert y.dtype == x_dtype and y.shape == (m, n)
        assert _relative(y, reference.quant_matmul(x, qw)) < BF16_TOLERANCE
    assert len(calls) == 2
    quant_matmul(torch.randn(threshold - 1, k, device="cuda").to(x_dtype), qw)
    assert len(calls) == 2


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


def _small_moe(seed: int, num_experts: int = 6) -> tuple[list, ExpertTable]:
    generator = torch.Generator().manual_seed(seed)
    experts = [tuple(quantize(torch.randn(*s, generator=generator) / 8, bits=4, group_size=32).to("cuda")
                     for s in ((64, 128), (64, 128), (128, 64))) for _ in range(num_experts)]  # fmt: skip
    return experts, ExpertTable(experts)


def test_moe_experts_replays_in_a_cuda_graph():
    """After a first call has uploaded the table's slots, the op captures, and a replay on new
    inputs gives the reference's output."""
    _, table = _small_moe(1)
    x = torch.randn(5, 128, device="cuda")
    weights, ids = torch.rand(5, 6).softmax(-1).topk(2, dim=-1)
    ids, weights = ids.to(torch.int32).cuda(), weights.cuda()
    moe_experts(x, ids, weights, table)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = moe_experts(x, ids, weights, table)
    new_weights, new_ids = torch.rand(5, 6).softmax(-1).topk(2, dim=-1)
    x.copy_(torch.randn(5, 128))
    ids.copy_(new_ids.to(torch.int32))
    weights.copy_(new_weights)
    graph.replay()
    assert _relative(y, reference.moe_experts(x, ids, weights, table)) < 1e-4


def test_moe_experts_uploads_a_changed_table_again():
    experts, table = _small_moe(2)
    x = torch.randn(3, 128, device="cuda")
    ids = torch.zeros(3, 1, dtype=torch.int32, device="cuda")
    weights = torch.ones(3, 1, device="cuda")
    before = moe_experts(x, ids, weights, table)
    table.set_slot(0, experts[5])
    after = moe_experts(x, ids, weights, table)
    assert _relative(after, reference.moe_experts(x, ids, weights, table)) < 1e-4
    assert _relative(after, before) > 0.1
