"""Weight compander (Cakaj, Mehnert, Yang 2023, arXiv 2306.16993; ../shared/SPEC.md §7): every
targeted weight w is reparameterised element-wise as w = f(v; a, b). The optimizer updates v (and,
in the learnable variant, a and b); the network sees f(v). f is odd and strictly increasing, expands
near zero (slope a/b > 1 at 0, so small, "dead" weights move faster and are pushed away from zero)
and compresses large magnitudes (bounded or sub-linear growth, so large weights are restrained). It
combines with the usual regularisers: dropout as ever, and weight decay, which then pulls on v.

The paper's closed form of f was not retrievable offline, so f is a pluggable family with a
documented default (SPEC §7), each member with its exact inverse and slope a/b at 0:

    "exp" (default)  f(v) = sign(v) a (1 - exp(-|v|/b))   bounded by a   f⁻¹(w) = -sign(w) b ln(1 - |w|/a)
    "mulaw"          f(v) = sign(v) a ln(1 + |v|/b)        grows as ln   f⁻¹(w) = sign(w) b (exp(|w|/a) - 1)

Per target, a and b are set at attach from the weight's largest magnitude m = max|w|: the `a` and
`b` arguments are multiples of m (defaults 2 and 1). So the slope at 0 is 2 in every layer, and
with "exp" every weight starts at most halfway to the bound, where the slope has fallen to 1: f
expands below the largest initial weight and compresses above it. A weight outside f's range
(|w| >= a for "exp") has no v and is refused. Learnable hyperparameters are a = exp(log_a) and
b = exp(log_b), positive whatever the optimizer does, and a multiplicative step size fits scales
that differ by orders of magnitude between layers.

    names = compander.attach(model)                 # every nn.Linear / conv weight: v = f⁻¹(w)
    optimizer = torch.optim.AdamW(model.parameters(), weight_decay=1e-2)
    ...train...
    compander.detach(model)                         # plain parameters holding f(v) again

Built on torch.nn.utils.parametrize: attach registers one `Compander` per weight, whose
right_inverse turns the weight's own Parameter object into v in place (an optimizer made before
attach now updates v), and detach removes it with the parametrized value baked in (the same
Parameter object now holds f(v); an optimizer's moments of v do not fit w, so make a new one).
"""

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

# Module types whose `weight` is a target by default.
LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


class Family(ABC):
    """An odd, strictly increasing f(v; a, b) = sign(v) g(|v|; a, b) with g(0) = 0 and a, b > 0
    (0-dim tensors). A subclass gives the magnitude map g on x = |v| >= 0, its partial derivatives,
    its inverse and its supremum; `attach(fn=...)` takes an instance."""

    name: str

    @abstractmethod
    def magnitude(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """g(x)."""

    @abstractmethod
    def derivative(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """dg/dx, which is also df/dv at v = ±x."""

    @abstractmethod
    def parameter_partials(
        self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(dg/da, dg/db) element-wise."""

    @abstractmethod
    def magnitude_inverse(self, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x with g(x) = y, for 0 <= y < limit(a, b)."""

    @abstractmethod
    def limit(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | float:
        """sup g: the magnitudes f can reach lie below it (math.inf when unbounded)."""

    def __call__(self, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _OddFunction.apply(self, v, a, b)

    def inverse(self, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sign(w) * self.magnitude_inverse(w.abs(), a, b)


class _OddFunction(torch.autograd.Function):
    """f(v) = sign(v) g(|v|) with the family's closed-form derivatives. Autograd through sign and
    abs would give df/dv = 0 at v = 0 instead of g'(0) = a/b, and a weight that is exactly zero
    (a pruned one, say) would never move: the very weights the compander means to revive."""

    @staticmethod
    def forward(ctx, family: Family, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.family = family
        ctx.save_for_backward(v, a, b)
        return torch.sign(v) * family.magnitude(v.abs(), a, b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, a, b = ctx.saved_tensors
        x = v.abs()
        grad_v = grad * ctx.family.derivative(x, a, b) if ctx.needs_input_grad[1] else None
        grad_a = grad_b = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            d_a, d_b = ctx.family.parameter_partials(x, a, b)
            signed = grad * torch.sign(v)
            grad_a = (signed * d_a).sum(dtype=a.dtype)
            grad_b = (signed * d_b).sum(dtype=b.dtype)
        return None, grad_v, grad_a, grad_b


class Exp(Family):
    """f(v) = sign(v) a (1 - exp(-|v|/b)): bounded by a; slope (a/b) exp(-|v|/b), a/b at 0."""

    name = "exp"

    def magnitude(self, x, a, b):
        return -a * torch.expm1(-x / b)

    def derivative(self, x, a, b):
        return a / b * torch.exp(-x / b)

    def parameter_partials(self, x, a, b):
        return -torch.expm1(-x / b), -a * x / (b * b) * torch.exp(-x / b)

    def magnitude_inverse(self, y, a, b):
        return -b * torch.log1p(-y / a)

    def limit(self, a, b):
        return a


class MuLaw(Family):
    """f(v) = sign(v) a ln(1 + |v|/b): unbounded but logarithmic; slope a / (b + |v|), a/b at 0."""

    name = "mulaw"

    def magnitude(self, x, a, b):
        return a * torch.log1p(x / b)

    def derivative(self, x, a, b):
        return a / (b + x)

    def parameter_partials(self, x, a, b):
        return torch.log1p(x / b), -a * x / (b * (b + x))

    def magnitude_inverse(self, y, a, b):
        return b * torch.expm1(y / a)

    def limit(self, a, b):
        return math.inf


FAMILIES: dict[str, Family] = {"exp": Exp(), "mulaw": MuLaw()}


class Compander(nn.Module):
    """The parametrization of one weight (`target`, its name in the model, for messages):
    forward(v) = f(v; a, b), right_inverse(w) = f⁻¹(w; a, b). log_a and log_b are 0-dim, in fp32
    (fp64 for fp64 weights) because a bfloat16 log_a of -3 would put a off by about a percent; as
    0-dim tensors they leave f(v) in v's dtype. They are parameters when learnable, else buffers
    (so they follow the module across devices and into the state dict)."""

    def __init__(
        self, family: Family, target: str, weight: torch.Tensor, a: float, b: float, learnable: bool
    ):
        super().__init__()
        self.family, self.target = family, target
        dtype = torch.promote_types(weight.dtype, torch.float32)
        for name, value in (("log_a", a), ("log_b", b)):
            log = torch.tensor(math.log(value), dtype=dtype, device=weight.device)
            if learnable:
                self.register_parameter(name, nn.Parameter(log))
            else:
                self.register_buffer(name, log)

    @property
    def a(self) -> torch.Tensor:
        return self.log_a.exp()

    @property
    def b(self) -> torch.Tensor:
        return self.log_b.exp()

    def check(self, w: torch.Tensor) -> None:
        """Raise ValueError unless every |w| lies inside f's range (so f⁻¹(w) exists)."""
        limit = self.family.limit(self.a, self.b)
        largest = w.detach().abs().max()
        if not largest < limit:
            raise ValueError(
                f"compander: {self.target} has |w| up to {float(largest):.4g}, outside the range of "
                f"{self.family.name!r} (|f| < {float(limit):.4g}); attach with a larger a"
            )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.family(v, self.a, self.b)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        self.check(w)
        return self.family.inverse(w, self.a, self.b)


def _family(fn: str | Family) -> Family:
    if isinstance(fn, Family):
        return fn
    if fn not in FAMILIES:
        raise ValueError(
            f"compander: fn must be one of {tuple(FAMILIES)} or a compander.Family instance, got {fn!r}"
        )
    return FAMILIES[fn]


def _owners(model: nn.Module) -> Counter:
    """Parameter -> how many modules hold it: more than one means tied weights (an LM head sharing
    the embedding), which one module's parametrization would silently turn into v in the other."""
    return Counter(p for module in model.modules() for p in module.parameters(recurse=False))


def _refuse_parametrized(module: nn.Module, attr: str, name: str) -> None:
    if parametrize.is_parametrized(module, attr):
        kinds = ", ".join(type(p).__name__ for p in module.parametrizations[attr])
        raise ValueError(
            f"compander: {name} is already parametrized (by {kinds}); a compander goes on a plain weight "
            "(compander.detach() removes one)"
        )


def _default_targets(model: nn.Module, owners: Counter) -> list[str]:
    names = []
    for prefix, module in model.named_modules():
        if not isinstance(module, LAYERS):
            continue
        name = f"{prefix}.weight" if prefix else "weight"
        _refuse_parametrized(module, "weight", name)
        if owners[module.weight] == 1:
            names.append(name)
    if not names:
        raise ValueError(
            f"compander: {type(model).__name__} has no nn.Linear or conv weight to reparameterise"
        )
    return names


def _check_target(model: nn.Module, name: str, owners: Counter) -> None:
    prefix, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(prefix)
    except AttributeError:
        module = None
    if module is not None:
        _refuse_parametrized(module, attr, name)
    own = dict(module.named_parameters(recurse=False)) if module is not None else {}
    if attr not in own:
        raise ValueError(f"compander: {type(model).__name__} has no parameter named {name!r}")
    if own[attr].dim() < 2:
        raise ValueError(
            f"compander: targets must be weights of 2 or more dimensions; {name} has shape {tuple(own[attr].shape)}"
        )
    if owners[own[attr]] > 1:
        raise ValueError(
            f"compander: {name} is shared with another module (tied weights), which would see v instead of w"
        )


def attach(
    model: nn.Module,
    fn: str | Family = "exp",
    learnable: bool = False,
    a: float = 2.0,
    b: float = 1.0,
    targets: Iterable[str] | None = None,
) -> list[str]:
    """Reparameterise each target weight as w = f(v) with v = f⁻¹(w), so the model's function is
    unchanged; returns the targets' names. fn: "exp", "mulaw" or a Family. a, b: multiples of each
    weight's largest |w| (slope a/b at 0). learnable: a and b become parameters (log_a, log_b; see
    `hyperparameters`). targets: parameter names as in model.named_parameters(), by default the
    weight of every nn.Linear and conv module whose weight no other module shares. Raises
    ValueError (and changes nothing) for unknown names, targets of fewer than 2 dimensions, tied
    or already parametrized weights, all-zero weights and weights outside f's range."""
    family = _family(fn)
    for label, value in (("a", a), ("b", b)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"compander: {label} must be a positive multiple of each weight's max|w|, got {value}"
            )
    owners = _owners(model)
    if targets is None:
        names = _default_targets(model, owners)
    elif isinstance(targets, str):
        raise ValueError(f"compander: targets must be a list of parameter names, got the string {targets!r}")
    else:
        names = list(dict.fromkeys(targets))
        if not names:
            raise ValueError("compander: targets is empty")
        for name in names:
            _check_target(model, name, owners)
    # Every target is checked before any is registered: a refused one leaves the model untouched.
    companders = {}
    for name in names:
        weight = model.get_parameter(name)
        scale = float(weight.detach().abs().max()) if weight.numel() else 0.0
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(
                f"compander: {name} has no finite nonzero max|w| (got {scale}) to set a and b from"
            )
        compander = Compander(family, name, weight, a * scale, b * scale, learnable)
        compander.check(weight)
        companders[name] = compander
    for name, compander in companders.items():
        prefix, _, attr = name.rpartition(".")
        parametrize.register_parametrization(model.get_submodule(prefix), attr, compander)
    return names


def detach(model: nn.Module) -> list[str]:
    """Remove every compander, leaving plain parameters that hold f(v) (the model computes what it
    computed with the compander); returns the names of the weights baked."""
    found = []
    for prefix, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr, chain in module.parametrizations.items():
            if not any(isinstance(p, Compander) for p in chain):
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            if len(chain) > 1:
                raise ValueError(
                    f"compander: {name} has other parametrizations stacked with the compander; remove them first"
                )
            found.append((module, attr, name))
    if not found:
        raise ValueError(f"compander: {type(model).__name__} has no compander attached")
    for module, attr, _ in found:
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return [name for _, _, name in found]


def hyperparameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable log_a and log_b of every compander of the model, for an optimizer group of
    their own: weight decay would pull log_a to 0, i.e. a to 1, which means nothing."""
    return [p for module in model.modules() if isinstance(module, Compander) for p in module.parameters()]
