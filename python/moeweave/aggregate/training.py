"""The one training loop of the aggregate face, shared by the weight combiners and the quantile
MLP: Adam on mini-batches, early stopping on a held-out validation split (the best state is
restored), seeded so that a fit is reproducible without touching torch's global generator.
Also the two loss terms of Fakoor et al.: the summed pinball loss and the crossing penalty.

Dimension legend: N samples, Q quantile levels.
"""

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TrainingConfig:
    learning_rate: float
    max_epochs: int
    patience: int  # epochs without a better validation loss before stopping
    batch_size: int
    validation_fraction: float  # 0: no validation split, train max_epochs on every row
    seed: int

    @classmethod
    def of(cls, estimator, seed: int) -> "TrainingConfig":
        """The settings of an estimator that has them as parameters of the same names."""
        return cls(
            estimator.learning_rate,
            estimator.max_epochs,
            estimator.patience,
            estimator.batch_size,
            estimator.validation_fraction,
            seed,
        )


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator for the block (parameter initialisation draws from it) and
    restore the caller's state afterwards, so a fit neither depends on nor disturbs it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def pinball_sum(prediction: torch.Tensor, y: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the pinball loss summed over levels. prediction [N, Q], y [N],
    levels [Q]."""
    u = y[:, None] - prediction  # [N, Q]
    return torch.maximum(levels * u, (levels - 1) * u).sum(dim=1).mean()


def crossing_penalty(prediction: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over samples of sum_{k < l} relu(g_k - g_l + margin) over every pair of levels,
    not just neighbours, as in the paper. prediction [N, Q]."""
    gaps = prediction[:, :, None] - prediction[:, None, :] + margin  # [N, Q, Q]
    later = torch.ones(gaps.shape[1:], dtype=torch.bool).triu(diagonal=1)  # [Q, Q]: k < l
    return torch.relu(gaps[:, later]).sum(dim=1).mean()


def validation_split(
    n: int, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (train, validation); no validation rows when fraction is 0."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {fraction}")
    order = torch.randperm(n, generator=generator)
    held_out = max(1, round(fraction * n)) if fraction > 0 else 0
    if n - held_out < 1:
        raise ValueError(f"validation_fraction={fraction} leaves no training rows out of n_samples={n}")
    return order[held_out:], order[:held_out]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch ops single-threaded for the block. The modules and batches trained here are
    tiny (thousands of parameters, hundreds of rows): waking intra-op threads costs more than it
    saves, 4-5x the training time on this project's 2-core machines while the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_module(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    y: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: TrainingConfig,
) -> torch.nn.Module:
    """Train module(*inputs) -> prediction against y under `loss`. Every tensor in `inputs`
    and y share the leading dimension N. Returns the module in eval mode, holding the state
    with the lowest validation loss (the last state when there is no validation split)."""
    generator = torch.Generator().manual_seed(config.seed)
    train, valid = validation_split(y.shape[0], config.validation_fraction, generator)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    best_loss, best_state, stale = float("inf"), copy.deepcopy(module.state_dict()), 0
    with one_thread():
        for _ in range(config.max_epochs):
            module.train()
            for batch in train[torch.randperm(train.numel(), generator=generator)].split(config.batch_size):
                optimizer.zero_grad()
                loss(module(*(x[batch] for x in inputs)), y[batch]).backward()
                optimizer.step()
            if valid.numel() == 0:
                continue
            module.eval()
            with torch.no_grad():
                current = float(loss(module(*(x[valid] for x in inputs)), y[valid]))
            if current < best_loss:
                best_loss, best_state, stale = current, copy.deepcopy(module.state_dict()), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    if valid.numel():
        module.load_state_dict(best_state)
    return module.eval()


def as_tensor(values: np.ndarray) -> torch.Tensor:
    """A float32 tensor of an array (the dtype every module here computes in)."""
    return torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)


def location_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations of values [N, ...] ([...] each), a zero deviation
    replaced by 1 so that constant columns stay constant instead of dividing by zero."""
    mean = values.mean(axis=0)
    scale = values.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


def draw_seed(random_state: np.random.RandomState) -> int:
    """A seed for torch or a scikit-learn estimator, drawn from the estimator's random state."""
    return int(random_state.randint(np.iinfo(np.int32).max))
