"""moeweave::silu_mul against its plain-torch twin, under every ISA level of this CPU."""

import pytest
import torch
import torch.nn.functional as F

from moeweave.ops import reference, silu_mul

# Tolerance per dtype: fp32 a few ulp (polynomial exp); fp16/bf16 one rounding of the storage
# type, since both sides compute in fp32 and round once.
TOLERANCE = {
    torch.float32: dict(rtol=2e-6, atol=1e-6),
    torch.float16: dict(rtol=1e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=8e-3, atol=1e-5),
}
SHAPES = [(0,), (1,), (7,), (19,), (111,), (7, 19), (3, 0, 5), (19, 111), (2, 7, 1111)]


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(isa, dtype, shape):
    generator = torch.Generator().manual_seed(sum(shape) + len(shape))
    gate = (torch.randn(shape, generator=generator) * 4).to(dtype)
    up = torch.randn(shape, generator=generator).to(dtype)
    out = silu_mul(gate, up)
    assert out.shape == gate.shape and out.dtype == dtype
    torch.testing.assert_close(out, reference.silu_mul(gate, up), **TOLERANCE[dtype])


def test_extreme_inputs(isa):
    gate = torch.tensor([-1e4, -100.0, -88.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.0, 100.0, 1e4] * 3)
    up = torch.full_like(gate, 1.5)
    torch.testing.assert_close(silu_mul(gate, up), reference.silu_mul(gate, up), **TOLERANCE[torch.float32])
    nan = silu_mul(torch.full((17,), float("nan")), torch.ones(17))
    assert torch.isnan(nan).all()


def test_large_input_uses_threads_consistently(isa):
    generator = torch.Generator().manual_seed(3)
    gate = torch.randn(4, 100_003, generator=generator).bfloat16()
    up = torch.randn(4, 100_003, generator=generator).bfloat16()
    torch.testing.assert_close(silu_mul(gate, up), reference.silu_mul(gate, up), **TOLERANCE[torch.bfloat16])


def test_non_contiguous_inputs():
    base = torch.randn(19, 38)
    gate, up = base[:, ::2], base.t()[::2, :19].t()
    torch.testing.assert_close(silu_mul(gate, up), reference.silu_mul(gate, up))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_torch_autograd(dtype):
    generator = torch.Generator().manual_seed(5)
    gate = torch.randn(7, 19, generator=generator).to(dtype).requires_grad_()
    up = torch.randn(7, 19, generator=generator).to(dtype).requires_grad_()
    grad = torch.randn(7, 19, generator=generator).to(dtype)
    silu_mul(gate, up).backward(grad)
    ref_gate, ref_up = gate.detach().float().requires_grad_(), up.detach().float().requires_grad_()
    (F.silu(ref_gate) * ref_up).backward(grad.float())
    tolerance = TOLERANCE[dtype] if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gate.grad.float(), ref_gate.grad, **tolerance)
    torch.testing.assert_close(up.grad.float(), ref_up.grad, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    gate = torch.randn(7, 19).to(dtype).requires_grad_()
    up = torch.randn(7, 19).to(dtype).requires_grad_()
    torch.library.opcheck(torch.ops.moeweave.silu_mul.default, (gate, up))


def test_torch_compile_fullgraph():
    @torch.compile(fullgraph=True)
    def expert_activation(x, w_gate, w_up):
        return silu_mul(x @ w_gate.t(), x @ w_up.t())

    x, w_gate, w_up = torch.randn(5, 16), torch.randn(32, 16), torch.randn(32, 16)
    torch.testing.assert_close(
        expert_activation(x, w_gate, w_up),
        reference.silu_mul(x @ w_gate.t(), x @ w_up.t()),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("gate", "up", "message"),
    [
        (torch.randn(3, 4), torch.randn(3, 5), "'up' must have the shape of 'gate'"),
        (torch.randn(3, 4), torch.randn(3, 4).double(), "'up' must have the dtype of 'gate'"),
        (
            torch.randn(3, 4).double(),
            torch.randn(3, 4).double(),
            "'gate' must be float32, float16 or bfloat16",
        ),
        (torch.ones(3, dtype=torch.int32), torch.ones(3, dtype=torch.int32), "'gate' must be float32"),
    ],
)
def test_bad_input_is_named(gate, up, message):
    with pytest.raises(ValueError, match=message):
        silu_mul(gate, up)


def test_fake_tensor_mode_goes_through_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = silu_mul(torch.empty(7, 19, dtype=torch.bfloat16), torch.empty(7, 19, dtype=torch.bfloat16))
    assert out.shape == (7, 19) and out.dtype == torch.bfloat16
