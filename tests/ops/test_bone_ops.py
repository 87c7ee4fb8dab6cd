"""Bone's ops against the plain-torch twins in float64: the native block-affine kernels
(bone_bat_form, bone_bat_block_grad) on every ISA level, dtype and awkward r (vector lanes plus a
scalar tail), on tiles cut out of a larger weight; moeweave::bone_bat_linear through the native path
with several panels; moeweave::bone_bat_weight over stacked experts; moeweave::bone_shard_linear (default and mini) forward, backward, gradcheck
and torch.compile; the kernels' argument errors. The layers against peft's MissLayer:
tests/train/test_bone.py."""

import pytest
import torch

import moeweave
from moeweave.ops import bone, reference
from moeweave.ops._launch import capsules
from moeweave.ops.bone_shards import bone_shard_linear

TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
}
DTYPES = list(TOLERANCE)


def _tile_case(r: int, dtype: torch.dtype, seed: int):
    """A weight of 4 x 14 blocks, its block-aligned tile rows [r, 3r) x columns [2r, 13r) (a
    row-strided view of 11 block columns: a full register tile of 8 blocks and a tail), the blocks
    of the tile's two block rows, and a row-strided buffer of the tile's shape."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(4 * r, 14 * r, generator=generator).to(dtype)
    blocks = torch.randn(2, r, r, generator=generator) * 0.3
    strided = torch.empty(2 * r, 12 * r, dtype=dtype)[:, : 11 * r]
    return weight[r : 3 * r, 2 * r : 13 * r], blocks, strided


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r", [1, 3, 16, 24, 64])
def test_form_matches_the_twin_on_every_isa(dtype, r):
    tile, blocks, out = _tile_case(r, dtype, seed=r)
    expected = reference.bone_bat_weight(tile.double(), blocks.double())
    native = moeweave._native.cpu_module()
    for level in moeweave.cpu.supported_isas():
        with moeweave.cpu.use_isa(level):
            out.zero_()
            native.bone_bat_form(*capsules(tile, blocks, out))
        torch.testing.assert_close(out.double(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r", [1, 3, 16, 24, 64])
def test_block_grad_matches_the_twin_on_every_isa(dtype, r):
    tile, _, grad = _tile_case(r, dtype, seed=100 + r)
    grad.copy_(torch.randn(grad.shape, generator=torch.Generator().manual_seed(r)))
    w = tile.double().reshape(2, r, 11, r).transpose(1, 2)  # [2, 11, r, r]: blocks W_ij
    g = grad.double().reshape(2, r, 11, r).transpose(1, 2)
    expected = ((w + torch.eye(r, dtype=torch.float64)).transpose(-1, -2) @ g).sum(
        1
    )  # sum_j (W_ij + I)^T G_ij
    native = moeweave._native.cpu_module()
    for level in moeweave.cpu.supported_isas():
        with moeweave.cpu.use_isa(level):
            dblock = torch.empty(2, r, r)
            native.bone_bat_block_grad(*capsules(tile, grad, dblock))
        torch.testing.assert_close(dblock.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bat_op_through_the_native_kernels_with_several_panels(monkeypatch, dtype):
    monkeypatch.setattr("moeweave.ops.bone.PANEL_BYTES", 2 * 48 * 16)
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(64, 48, generator=generator).to(dtype)
    block = torch.randn(4, 16, 16, generator=generator) * 0.2
    bias = torch.randn(64, generator=generator).to(dtype)
    x = torch.randn(2, 5, 48, generator=generator).to(dtype)
    dy = torch.randn(2, 5, 64, generator=generator).to(dtype)
    ours_x, ours_b = x.clone().requires_grad_(), block.clone().requires_grad_()
    y = bone.bone_bat_linear(ours_x, weight, ours_b, bias)
    y.backward(dy)
    twin_x, twin_b = x.double().requires_grad_(), block.double().requires_grad_()
    expected = reference.bone_linear(twin_x, weight.double(), bias.double(), twin_b, "bat")
    expected.backward(dy.double())
    scale = expected.abs().max()
    torch.testing.assert_close(y.double() / scale, expected / scale, **TOLERANCE[dtype])
    for mine, twin in ((ours_x.grad, twin_x.grad), (ours_b.grad, twin_b.grad)):
        torch.testing.assert_close(
            mine.double() / twin.abs().max(), twin / twin.abs().max(), **TOLERANCE[dtype]
        )


@pytest.mark.parametrize("dtype", [torch.float64, *DTYPES])
def test_bat_weight_of_stacked_experts_matches_the_twin(dtype):
    """moeweave::bone_bat_weight over [2, 3] experts: W' and dB (from a random dW') against the
    twin's autograd in float64; gradcheck where the dtype allows."""
    generator = torch.Generator().manual_seed(9)
    weight = torch.randn(2, 3, 32, 24, generator=generator).to(dtype)
    block = (torch.randn(2, 3, 4, 8, 8, generator=generator) * 0.2).to(
        torch.promote_types(dtype, torch.float32)
    )
    grad = torch.randn(weight.shape, generator=generator).to(dtype)
    ours_b = block.clone().requires_grad_()
    formed = bone.bone_bat_weight(weight, ours_b)
    formed.backward(grad)
    twin_b = block.double().requires_grad_()
    expected = reference.bone_bat_weight(weight.double(), twin_b)
    expected.backward(grad.double())
    tolerance = TOLERANCE.get(dtype, dict(rtol=1e-12, atol=1e-12))
    torch.testing.assert_close(formed.double(), expected, **tolerance)
    scale = twin_b.grad.abs().max()
    torch.testing.assert_close(ours_b.grad.double() / scale, twin_b.grad / scale, **tolerance)
    if dtype == torch.float64:
        small = block[:1, :1].double().requires_grad_()
        assert torch.autograd.gradcheck(lambda b: bone.bone_bat_weight(weight[:1, :1], b), (small,))


def test_kernel_arguments_are_checked():
    native = moeweave._native.cpu_module()
    weight, blocks = torch.randn(8, 12), torch.randn(2, 4, 4)
    with pytest.raises(ValueError, match="'w' must be a tile of whole 4 x 4 blocks"):
        native.bone_bat_form(*capsules(weight[:, :10], blocks, torch.empty(8, 10)))
    with pytest.raises(ValueError, match="'out' must have the dtype of 'w'"):
        native.bone_bat_form(*capsules(weight, blocks, torch.empty(8, 12, dtype=torch.bfloat16)))
    with pytest.raises(ValueError, match="'dblock' must be \\[rows / r, r, r\\]"):
        native.bone_bat_block_grad(*capsules(weight, weight, torch.empty(2, 4, 3)))
    with pytest.raises(ValueError, match="'x' must have the dtype of 'weight'"):
        bone.bone_bat_linear(torch.randn(3, 12, dtype=torch.float64), weight, blocks)
    with pytest.raises(ValueError, match="bone_bat_weight: a weight of shape \\[3, 8, 12\\] needs"):
        bone.bone_bat_weight(torch.randn(3, 8, 12), blocks)


# (in, out, r, width): default has width = out; mini's width divides out; in % r may be nonzero,
# and r may exceed in (x is all padding but one shard).
SHARD_CASES = [(50, 37, 16, 37), (19, 111, 4, 111), (45, 36, 8, 6), (64, 8, 8, 1), (5, 12, 8, 12)]


@pytest.mark.parametrize(("in_features", "out_features", "r", "width"), SHARD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shard_op_matches_the_twin(in_features, out_features, r, width, dtype):
    generator = torch.Generator().manual_seed(in_features)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
    bias = torch.randn(out_features, generator=generator).to(dtype)
    block = torch.randn(r, width, generator=generator).to(dtype)
    x = torch.randn(3, 4, in_features, generator=generator).to(dtype)
    dy = torch.randn(3, 4, out_features, generator=generator).to(dtype)
    ours_x, ours_b = x.clone().requires_grad_(), block.clone().requires_grad_()
    y = bone_shard_linear(ours_x, weight, ours_b, bias)
    y.backward(dy)
    twin_x, twin_b = x.double().requires_grad_(), block.double().requires_grad_()
    mode = "default" if width == out_features else "mini"
    expected = reference.bone_linear(twin_x, weight.double(), bias.double(), twin_b, mode)
    expected.backward(dy.double())
    for mine, twin in ((y, expected), (ours_x.grad, twin_x.grad), (ours_b.grad, twin_b.grad)):
        scale = twin.abs().max()
        torch.testing.assert_close(mine.double() / scale, twin / scale, **TOLERANCE[dtype])


def test_shard_op_gradcheck_and_compile():
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(12, 10, dtype=torch.float64, generator=generator)
    bias = torch.randn(12, dtype=torch.float64, generator=generator)
    x = torch.randn(2, 3, 10, dtype=torch.float64, generator=generator, requires_grad=True)
    for width in (12, 4):
        block = torch.randn(4, width, dtype=torch.float64, generator=generator, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, b: bone_shard_linear(x, weight, b, bias), (x, block))
        compiled = torch.compile(lambda x, b: bone_shard_linear(x, weight, b, bias), fullgraph=True)
        torch.testing.assert_close(compiled(x, block), bone_shard_linear(x, weight, block, bias))


def test_shard_op_errors():
    with pytest.raises(ValueError, match="width dividing out = 12"):
        bone_shard_linear(torch.randn(2, 10), torch.randn(12, 10), torch.randn(4, 5))
    with pytest.raises(ValueError, match="'x' must end in 10 features"):
        bone_shard_linear(torch.randn(2, 9), torch.randn(12, 10), torch.randn(4, 12))


def test_ops_pass_opcheck():
    """torch.library.opcheck: schemas, fakes (shapes and strides) against the real outputs, autograd
    registration and AOT dispatch, with a non-contiguous x."""
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(5, 2, 48, generator=generator).transpose(0, 1).requires_grad_()
    weight, bias = torch.randn(32, 48, generator=generator), torch.randn(32, generator=generator)
    cases = [
        (
            torch.ops.moeweave.bone_bat_linear.default,
            (x, weight, torch.randn(4, 8, 8).requires_grad_(), bias),
        ),
        (
            torch.ops.moeweave.bone_shard_linear.default,
            (x, weight, torch.randn(8, 16).requires_grad_(), None),
        ),
        (
            torch.ops.moeweave.bone_bat_weight.default,
            (torch.randn(3, 32, 48), torch.randn(3, 4, 8, 8).requires_grad_()),
        ),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_frozen_weights_are_required():
    weight = torch.randn(8, 12, requires_grad=True)
    with pytest.raises(ValueError, match="bone_bat_linear: 'weight' is frozen"):
        bone.bone_bat_linear(torch.randn(3, 12), weight, torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="bone_shard_linear: 'bias' is frozen"):
        bone_shard_linear(
            torch.randn(3, 12), weight.detach(), torch.randn(4, 8), torch.randn(8, requires_grad=True)
        )
