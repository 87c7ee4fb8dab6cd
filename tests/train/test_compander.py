"""The weight compander (moeweave.train.compander): each family is odd, strictly increasing and
inverted exactly (property-tested with hypothesis); slope a/b > 1 at 0 and compression of large
magnitudes; attach leaves a small model's outputs as they were before attach; gradients of v and
of the learnable hyperparameters against torch.autograd.gradcheck (float64) and a plain-torch
chain-rule recomputation from the gradient of the plain weight; detach bakes f(v) and restores the
plain model; AdamW's weight decay on v; clear errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

from moeweave.train import compander

FAMILIES = list(compander.FAMILIES)
# Fixed examples (derandomize) and no example database: the same cases every run, no files.
DETERMINISTIC = dict(derandomize=True, database=None, deadline=None, max_examples=50)
scales = st.floats(0.01, 100.0)


def scalars(a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)


def small_model(dtype=torch.float32) -> nn.Module:
    """A conv layer, two linears (one without bias) and a LayerNorm, with seeded weights."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 3, kernel_size=3),
        nn.Flatten(),
        nn.Linear(15, 7),
        nn.LayerNorm(7),
        nn.Tanh(),
        nn.Linear(7, 4, bias=False),
    ).to(dtype)


def model_input(dtype=torch.float32) -> torch.Tensor:
    return torch.randn(6, 2, 7, generator=torch.Generator().manual_seed(1)).to(dtype)  # [N, C, L]


def plain_f(name: str, v: torch.Tensor, a, b) -> torch.Tensor:
    """SPEC §7's formulas written out in plain torch."""
    if name == "exp":
        return torch.sign(v) * a * (1 - torch.exp(-v.abs() / b))
    return torch.sign(v) * a * torch.log(1 + v.abs() / b)


@pytest.mark.parametrize("name", FAMILIES)
@settings(**DETERMINISTIC)
@given(
    t=st.lists(st.floats(-500.0, 500.0), min_size=2, max_size=20),
    a=scales,
    b=scales,
)
def test_odd_increasing_and_the_spec_formula(name, t, a, b):
    """v = t b with |t| <= 500, where exp(-|v|/b) is still a positive fp64 number."""
    family = compander.FAMILIES[name]
    v = torch.tensor(sorted(t), dtype=torch.float64) * b
    a, b = scalars(a, b)
    w = family(v, a, b)
    assert torch.equal(family(-v, a, b), -w)
    assert (torch.diff(w) >= 0).all()  # rounding may tie neighbours; the slope below is what is strict
    v = v.requires_grad_()
    (slope,) = torch.autograd.grad(family(v, a, b).sum(), v)
    assert (slope > 0).all()
    # The plain formula loses the tiny |v|/b that expm1 and log1p keep: absolute slack near 0.
    torch.testing.assert_close(w, plain_f(name, v.detach(), a, b), rtol=1e-12, atol=1e-15 * float(a))


@pytest.mark.parametrize("name", FAMILIES)
@settings(**DETERMINISTIC)
@given(
    fractions=st.lists(st.floats(-0.999, 0.999), min_size=1, max_size=20),
    a=scales,
    b=scales,
)
def test_inverse_is_exact(name, fractions, a, b):
    """w spans 99.9 % of the bounded range (a multiple of a for the unbounded one)."""
    family = compander.FAMILIES[name]
    a, b = scalars(a, b)
    span = a if name == "exp" else 10 * a
    w = torch.tensor(fractions, dtype=torch.float64) * span
    v = family.inverse(w, a, b)
    torch.testing.assert_close(family(v, a, b), w, rtol=1e-12, atol=1e-300)
    assert torch.equal(family.inverse(-w, a, b), -v)


@pytest.mark.parametrize("name", FAMILIES)
def test_slope_above_one_at_zero_and_compression_of_large_magnitudes(name):
    model = nn.Linear(19, 7)
    compander.attach(model, fn=name)
    unit = model.parametrizations.weight[0]
    largest = model.weight.detach().abs().max()
    torch.testing.assert_close(unit.a, 2 * largest)  # the default rule: a = 2 max|w|, b = max|w|
    torch.testing.assert_close(unit.b, largest)
    v = torch.tensor([0.0, 0.5, 100.0, 1e4]) * float(largest)
    v.requires_grad_()
    w = unit(v)
    (slope,) = torch.autograd.grad(w.sum(), v)
    torch.testing.assert_close(slope[0], torch.tensor(2.0))  # a/b, at exactly 0 too
    assert slope[1] > 1  # expands small weights
    assert (slope[2:] < 1).all() and (w[2:] < v[2:] / 10).all()  # compresses large ones
    if name == "exp":
        assert (w <= unit.a).all()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_attach_preserves_outputs(name, learnable, dtype):
    model, x = small_model(dtype), model_input(dtype)
    with torch.no_grad():
        expected = model(x)
    names = compander.attach(model, fn=name, learnable=learnable)
    assert names == ["0.weight", "2.weight", "5.weight"]  # not LayerNorm's, not the biases
    assert model[2].weight.dtype == dtype
    with torch.no_grad():
        got = model(x)
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradcheck_in_float64(name):
    """dv, da and db of the closed-form backward against finite differences, at v = 0 as well."""
    family = compander.FAMILIES[name]
    v = torch.tensor([[0.0, 0.3, -1.7], [2.5, -0.01, 0.0]], dtype=torch.float64, requires_grad=True)
    a = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(family, (v, a, b))


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_reach_v_and_the_hyperparameters(name):
    """With w = f(v; a, b), a = exp(log_a), b = exp(log_b): dL/dv = dL/dw f'(v), dL/dlog_a =
    sum dL/dw w (f is linear in a), dL/dlog_b = b sum dL/dw df/db, from dL/dw of the plain layer."""
    torch.manual_seed(0)
    model = nn.Linear(7, 5).double()
    x = torch.randn(3, 7, dtype=torch.float64)
    target = torch.randn(3, 5, dtype=torch.float64)
    compander.attach(model, fn=name, learnable=True)
    unit = model.parametrizations.weight[0]
    v = model.parametrizations.weight.original
    with torch.no_grad():
        v[0, 0] = 0.0  # the slope at exactly 0 must come through too
    nn.functional.mse_loss(model(x), target).backward()

    a, b = unit.a.detach(), unit.b.detach()
    plain = nn.Linear(7, 5).double()
    with torch.no_grad():
        plain.weight.copy_(plain_f(name, v, a, b))
        plain.bias.copy_(model.bias)
    nn.functional.mse_loss(plain(x), target).backward()
    grad_w, w, x_ = plain.weight.grad, plain.weight.detach(), v.detach().abs()
    if name == "exp":
        slope = a / b * torch.exp(-x_ / b)
        dw_db = -torch.sign(v) * a * x_ / b**2 * torch.exp(-x_ / b)
    else:
        slope = a / (b + x_)
        dw_db = -torch.sign(v) * a * x_ / (b * (b + x_))
    torch.testing.assert_close(v.grad, grad_w * slope, rtol=1e-12, atol=1e-15)
    assert v.grad[0, 0] != 0
    torch.testing.assert_close(unit.log_a.grad, (grad_w * w).sum(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(unit.log_b.grad, b * (grad_w * dw_db).sum(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(model.bias.grad, plain.bias.grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("learnable", [False, True])
def test_detach_bakes_f_of_v_and_leaves_the_plain_model(learnable):
    model, x = small_model(), model_input()
    keys = set(model.state_dict())
    compander.attach(model, fn="mulaw", learnable=learnable)
    originals = {n: model.get_submodule(n).parametrizations.weight.original for n in ("0", "2", "5")}
    with torch.no_grad():
        for v in originals.values():
            v.mul_(1.5)  # as if trained, so that f(v) is no longer the weight attached
        baked = {n: model.get_submodule(n).weight.clone() for n in originals}
        attached = model(x)
    assert compander.detach(model) == ["0.weight", "2.weight", "5.weight"]
    assert set(model.state_dict()) == keys
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert [type(m) for m in model] == [type(m) for m in small_model()]
    for n, weight in baked.items():
        parameter = model.get_submodule(n).weight
        assert type(parameter) is nn.Parameter and parameter.requires_grad
        assert parameter is originals[n]  # same object: nothing else points at a stale tensor
        assert torch.equal(parameter, weight)
    with torch.no_grad():
        assert torch.equal(model(x), attached)


def test_weight_decay_on_v_and_none_on_the_hyperparameters():
    """A step with zero gradients is AdamW's decay alone: v shrinks by (1 - lr wd), w = f(v) with
    it; the hyperparameters, in a group without decay, stay."""
    model, x = small_model(), model_input()
    compander.attach(model, learnable=True)
    extra = compander.hyperparameters(model)
    assert len(extra) == 6
    ids = {id(p) for p in extra}
    weights = [p for p in model.parameters() if id(p) not in ids]
    lr, decay = 0.1, 0.5
    optimizer = torch.optim.AdamW(
        [{"params": weights, "weight_decay": decay}, {"params": extra, "weight_decay": 0.0}], lr=lr
    )
    v = model[2].parametrizations.weight.original
    before_v, before_w, before_extra = v.detach().clone(), model[2].weight.detach().clone(), extra[0].item()
    model(x).sum().mul(0).backward()
    optimizer.step()
    torch.testing.assert_close(v.detach(), before_v * (1 - lr * decay))
    assert (model[2].weight.abs() < before_w.abs()).all()
    assert extra[0].item() == before_extra
    optimizer.zero_grad()
    model(x).pow(2).sum().backward()
    optimizer.step()  # an ordinary step moves v and the hyperparameters
    assert extra[0].item() != before_extra
    assert not torch.equal(v.detach(), before_v * (1 - lr * decay))


class Tanh(compander.Family):
    """f(v) = sign(v) a tanh(|v|/b): a family from outside the module."""

    name = "tanh"

    def magnitude(self, x, a, b):
        return a * torch.tanh(x / b)

    def derivative(self, x, a, b):
        return a / b / torch.cosh(x / b) ** 2

    def parameter_partials(self, x, a, b):
        return torch.tanh(x / b), -a * x / b**2 / torch.cosh(x / b) ** 2

    def magnitude_inverse(self, y, a, b):
        return b * torch.atanh(y / a)

    def limit(self, a, b):
        return a


def test_a_family_of_ones_own():
    model, x = small_model(torch.float64), model_input(torch.float64)
    with torch.no_grad():
        expected = model(x)
    compander.attach(model, fn=Tanh(), learnable=True, targets=["2.weight"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    unit = model[2].parametrizations.weight[0]
    v = torch.randn(4, dtype=torch.float64, requires_grad=True)
    a, b = unit.a.detach().requires_grad_(), unit.b.detach().requires_grad_()
    assert torch.autograd.gradcheck(unit.family, (v, a, b))


def test_tied_weights_are_skipped_by_default_and_refused_by_name():
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 6), nn.Linear(6, 11, bias=False))
    model[2].weight = model[0].weight
    assert compander.attach(model) == ["1.weight"]
    compander.detach(model)
    with pytest.raises(ValueError, match=r"compander: 2\.weight is shared with another module"):
        compander.attach(model, targets=["2.weight"])


def test_explicit_targets_include_an_embedding():
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 6))
    assert compander.attach(model, targets=["0.weight", "0.weight"]) == ["0.weight"]
    assert not parametrize.is_parametrized(model[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fn="cubic"), r"fn must be one of \('exp', 'mulaw'\) or a compander.Family instance, got 'cubic'"),
        (dict(a=0.0), r"a must be a positive multiple of each weight's max\|w\|, got 0.0"),
        (dict(b=-1.0), r"b must be a positive multiple"),
        (dict(targets=["2.bias"]), r"targets must be weights of 2 or more dimensions; 2.bias has shape \(7,\)"),
        (dict(targets=["3.weight"]), r"targets must be weights of 2 or more dimensions; 3.weight has shape"),
        (dict(targets=["2.wieght"]), r"Sequential has no parameter named '2.wieght'"),
        (dict(targets=["9.weight"]), r"Sequential has no parameter named '9.weight'"),
        (dict(targets="2.weight"), r"targets must be a list of parameter names, got the string '2.weight'"),
        (dict(targets=[]), r"targets is empty"),
        (dict(a=0.9), r"0.weight has \|w\| up to .*, outside the range of 'exp' \(\|f\| < .*\); attach with a larger a"),
    ],
)  # fmt: skip
def test_clear_errors_leave_the_model_untouched(kwargs, message):
    model = small_model()
    state = {k: t.clone() for k, t in model.state_dict().items()}
    with pytest.raises(ValueError, match="compander: " + message):
        compander.attach(model, **kwargs)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())


def test_mulaw_has_no_range_limit():
    model = small_model()
    compander.attach(model, fn="mulaw", a=0.5, b=0.1)  # weights beyond a: fine for an unbounded f
    with torch.no_grad():
        torch.testing.assert_close(model[2].weight, small_model()[2].weight, rtol=1e-5, atol=1e-6)


def test_attaching_twice_and_detaching_nothing():
    model = small_model()
    with pytest.raises(ValueError, match=r"compander: Sequential has no compander attached"):
        compander.detach(model)
    compander.attach(model)
    for targets in (None, ["2.weight"]):
        with pytest.raises(
            ValueError, match=r"compander: \d.weight is already parametrized \(by Compander\)"
        ):
            compander.attach(model, targets=targets)


def test_refusals_on_all_zero_or_empty_weights_later_assignments_and_stacked_parametrizations():
    model = small_model()
    with torch.no_grad():
        model[5].weight.zero_()
    with pytest.raises(ValueError, match=r"compander: 5.weight has no finite nonzero max\|w\| \(got 0.0\)"):
        compander.attach(model)
    empty = nn.Linear(1, 3)
    empty.weight = nn.Parameter(torch.empty(3, 0))
    with pytest.raises(ValueError, match=r"compander: weight has no finite nonzero max\|w\| \(got 0.0\)"):
        compander.attach(empty)
    compander.attach(model, targets=["2.weight"])
    with pytest.raises(ValueError, match=r"compander: 2\.weight has \|w\| up to 100, outside the range"):
        model[2].weight = torch.full((7, 15), 100.0)  # parametrize calls right_inverse
    parametrize.register_parametrization(model[2], "weight", nn.Identity())
    with pytest.raises(ValueError, match=r"compander: 2\.weight has other parametrizations stacked"):
        compander.detach(model)


def test_hyperparameters_only_when_learnable():
    model = small_model()
    compander.attach(model)
    assert compander.hyperparameters(model) == []
    assert {n.rsplit(".", 1)[1] for n, _ in model.named_buffers()} == {"log_a", "log_b"}
    unit = model[2].parametrizations.weight[0]
    assert math.isclose(float(unit.a / unit.b), 2.0, rel_tol=1e-6)
