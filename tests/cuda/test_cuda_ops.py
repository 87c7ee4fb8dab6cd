"""The CUDA kernels against the plain-torch twins, on a GPU. Skipped where none is present."""

import pytest
import torch

from moeweave import _native
from moeweave.ops import reference, reroute, silu_mul
from moeweave.ops.bone import bone_bat_linear

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=1e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=8e-3, atol=1e-5),
}


def test_cuda_module_is_built_and_sees_the_gpu():
    module = _native.cuda_module()
    assert module is not None, _native.load_error("_C_cuda")
    assert module.device_count() == torch.cuda.device_count()


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (19, 111), (3, 7, 1111), (4096, 14336)], ids=str)
def test_silu_mul(dtype, shape):
    gate = (torch.randn(shape, device="cuda") * 4).to(dtype)
    up = torch.randn(shape, device="cuda").to(dtype)
    torch.testing.assert_close(silu_mul(gate, up), reference.silu_mul(gate, up), **TOLERANCE[dtype])


def test_silu_mul_unaligned_views():
    base = torch.randn(1 + 19 * 111, device="cuda")
    gate, up = base[1:].view(19, 111), base[:-1].view(19, 111)
    torch.testing.assert_close(silu_mul(gate, up), reference.silu_mul(gate, up), **TOLERANCE[torch.float32])


@pytest.mark.parametrize(
    ("T", "K", "A", "E"), [(0, 6, 2, 64), (1, 1, 0, 1), (111, 6, 3, 64), (5000, 8, 16, 160)]
)
def test_reroute(T, K, A, E):
    topk_ids = torch.randint(0, E, (T, K), dtype=torch.int32, device="cuda")
    tok_adapter = torch.randint(-1, A, (T,), dtype=torch.int32, device="cuda")
    remap = torch.randint(0, 4 * E, (A + 1, E), dtype=torch.int32, device="cuda")
    assert torch.equal(reroute(topk_ids, tok_adapter, remap), reference.reroute(topk_ids, tok_adapter, remap))


def test_reroute_out_of_range_gives_minus_one_without_sync():
    topk_ids = torch.tensor([[0, 99]], dtype=torch.int32, device="cuda")
    remap = torch.arange(8, dtype=torch.int32, device="cuda").view(1, 8)
    out = reroute(topk_ids, torch.tensor([-1], dtype=torch.int32, device="cuda"), remap)
    assert out.tolist() == [[0, -1]]


def test_reroute_in_a_cuda_graph():
    topk_ids = torch.randint(0, 64, (256, 6), dtype=torch.int32, device="cuda")
    tok_adapter = torch.randint(-1, 4, (256,), dtype=torch.int32, device="cuda")
    remap = torch.randint(0, 256, (5, 64), dtype=torch.int32, device="cuda")
    reroute(topk_ids, tok_adapter, remap)  # load the module outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = reroute(topk_ids, tok_adapter, remap)
    topk_ids.copy_(torch.randint(0, 64, (256, 6), dtype=torch.int32, device="cuda"))
    graph.replay()
    assert torch.equal(out, reference.reroute(topk_ids, tok_adapter, remap))


def test_cuda_op_compiles_fullgraph():
    @torch.compile(fullgraph=True)
    def activation(gate, up):
        return silu_mul(gate, up) + 1

    gate, up = torch.randn(19, 111, device="cuda"), torch.randn(19, 111, device="cuda")
    torch.testing.assert_close(
        activation(gate, up), reference.silu_mul(gate, up) + 1, **TOLERANCE[torch.float32]
    )


# Relative to the largest magnitude: the sums run over up to 4096 terms.
BONE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize(("out_features", "in_features", "r"), [(64, 48, 16), (4096, 1024, 64), (30, 45, 15)])
def test_bone_bat_linear(monkeypatch, dtype, out_features, in_features, r):
    """Several W' panels (a small PANEL_BYTES) formed by the CUDA kernels, against the twin in fp64."""
    monkeypatch.setattr("moeweave.ops.bone.PANEL_BYTES", 2 * in_features * 2 * r)
    generator = torch.Generator().manual_seed(r)
    weight = torch.randn(out_features, in_features, generator=generator) / in_features**0.5
    block = torch.randn(out_features // r, r, r, generator=generator) * 0.1
    x = torch.randn(3, 7, in_features, generator=generator)
    dy = torch.randn(3, 7, out_features, generator=generator)
    ours_x = x.to("cuda", dtype, copy=True).requires_grad_()
    ours_b = block.to("cuda", copy=True).requires_grad_()
    y = bone_bat_linear(ours_x, weight.to("cuda", dtype), ours_b)
    y.backward(dy.to("cuda", dtype))
    twin_x, twin_b = x.double().requires_grad_(), block.double().requires_grad_()
    expected = reference.bone_linear(twin_x, weight.double(), None, twin_b, "bat")
    expected.backward(dy.double())
    for mine, twin in ((y, expected), (ours_x.grad, twin_x.grad), (ours_b.grad, twin_b.grad)):
        scale = twin.abs().max()
        tolerance = BONE_TOLERANCE[dtype]
        torch.testing.assert_close(mine.double().cpu() / scale, twin / scale, rtol=tolerance, atol=tolerance)
