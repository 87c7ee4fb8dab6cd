"""LIFT: sparse fine-tuning of the principal weights (Liu et al. 2025, arXiv 2506.00772;
../shared/SPEC.md §5).

For each trained matrix W [m, n], the principal weights are the k entries of largest magnitude in
its rank-r approximation W_r = U_r S_r V_r^T (exact SVD, or torch.svd_lowrank with q = 2r). Only
those entries train; Adam's moments exist for them alone, as 1-D tensors of length k, so the
optimizer state is 3k numbers (two moments and the entry's index) instead of dense AdamW's 2mn.

    optimizer = lift.SparseAdamW(model, rank=128, lora_rank=16, update_interval=200, lr=1e-4)
    ...loss.backward(); optimizer.step(); optimizer.zero_grad()...

The update of a masked entry is exactly torch.optim.AdamW's (decoupled weight decay, bias
correction with the optimizer's step count); an unmasked entry is never written, so it stays
bit-identical. Every `update_interval` steps the masks are recomputed from the current weights and
the moments remapped: an entry in both masks keeps its moments, a new one starts at zero, and the
step count (hence the bias correction) goes on. The mask is the top-k by largest magnitude: the
released code's `lift_sparse` setting takes the smallest, a bug we do not reproduce.

k per matrix: `k` itself, `density` x m n, or the parameter count of a rank-`lora_rank` LoRA,
(m + n) lora_rank (at most m n), the paper's choice. Transformers 5's fused expert tensors
[E, m, n] are E matrices, each with its own mask of k entries. The weights trained by default are
every matrix of the model except the embeddings and the LM head; everything else is frozen.
"""

import math
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

SVD_METHODS = ("exact", "randomized")


def principal_mask(weight: torch.Tensor, rank: int, k: int, svd: str = "exact") -> torch.Tensor:
    """Bool mask [m, n] of the k largest-magnitude entries of weight's rank-`rank` approximation
    (rank at least min(m, n) approximates weight by itself)."""
    if weight.dim() != 2:
        raise ValueError(f"lift: principal_mask needs a 2-D weight, got shape {tuple(weight.shape)}")
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[_principal_indices(weight, rank, k, svd).long()] = True
    return mask.view(weight.shape)


def _principal_indices(weight: torch.Tensor, rank: int, k: int, svd: str) -> torch.Tensor:
    """Sorted flat indices (int64 [k]) of the principal entries of a 2-D weight."""
    if svd not in SVD_METHODS:
        raise ValueError(f"lift: svd must be one of {SVD_METHODS}, got {svd!r}")
    if rank < 1:
        raise ValueError(f"lift: rank must be at least 1, got {rank}")
    if not 1 <= k <= weight.numel():
        raise ValueError(
            f"lift: k = {k} must be in [1, {weight.numel()}] for a weight of shape {tuple(weight.shape)}"
        )
    w = weight.detach().float()
    rank = min(rank, *w.shape)
    if rank == min(w.shape):
        approx = w
    elif svd == "exact":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    else:
        u, s, v = torch.svd_lowrank(w, q=min(2 * rank, *w.shape), niter=2)
        approx = (u[:, :rank] * s[:rank]) @ v[:, :rank].T
    return torch.topk(approx.abs().flatten(), k, sorted=False).indices.sort().values


def lora_equivalent_k(shape: tuple[int, int], lora_rank: int) -> int:
    """The trainable-parameter count of a rank-`lora_rank` LoRA on an [m, n] matrix, at most m n."""
    m, n = shape
    return min((m + n) * lora_rank, m * n)


def default_targets(model: torch.nn.Module) -> list[str]:
    """Names of the parameters LIFT trains by default: every matrix (2-D, or 3-D fused experts)
    outside embeddings, convolutions (whose 3-D kernels are not stacks of matrices) and the LM
    head; a parameter shared by several modules is named once, as model.named_parameters() does."""
    skipped = {
        id(m) for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.modules.conv._ConvNd))
    }
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is not None:
        skipped.add(id(head))
    skipped_params = {id(p) for m in model.modules() if id(m) in skipped for p in m.parameters(recurse=False)}
    return [
        name
        for name, parameter in model.named_parameters()
        if parameter.dim() in (2, 3) and id(parameter) not in skipped_params
    ]


class SparseAdamW(torch.optim.Optimizer):
    """AdamW on the principal weights of `model` only (see the module docstring). Exactly one of
    `k`, `density`, `lora_rank` sets the entries per matrix. `targets` names the parameters to train
    (default: `default_targets(model)`); every other parameter of the model is frozen."""

    def __init__(
        self,
        model: torch.nn.Module,
        rank: int = 128,
        *,
        k: int | None = None,
        density: float | None = None,
        lora_rank: int | None = None,
        update_interval: int = 200,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        svd: str = "randomized",
        targets: Iterable[str] | None = None,
    ):
        if sum(x is not None for x in (k, density, lora_rank)) != 1:
            raise ValueError("lift: give exactly one of k, density, lora_rank")
        if density is not None and not 0 < density <= 1:
            raise ValueError(f"lift: density must be in (0, 1], got {density}")
        if update_interval < 1:
            raise ValueError(f"lift: update_interval must be at least 1, got {update_interval}")
        named = dict(model.named_parameters())
        names = default_targets(model) if targets is None else list(targets)
        unknown = [name for name in names if name not in named]
        if unknown:
            raise ValueError(f"lift: {unknown} are not parameters of this model")
        flat = [name for name in names if named[name].dim() not in (2, 3)]
        if flat:
            raise ValueError(f"lift: targets must be matrices (2-D, or 3-D fused experts), not {flat}")
        if not names:
            raise ValueError("lift: the model has no matrix to train")
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        params = [named[name].requires_grad_(True) for name in names]
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.rank, self.svd, self.update_interval = rank, svd, update_interval
        self._entries = (k, density, lora_rank)
        for name, parameter in tqdm(
            list(zip(names, params, strict=True)), desc="principal weights", unit="matrix"
        ):
            if not parameter.is_contiguous():
                raise ValueError(f"lift: {name} is not contiguous")
            indices = self._indices(parameter)
            zeros = torch.zeros(len(indices), dtype=torch.float32, device=parameter.device)
            self.state[parameter] = {
                "step": 0,
                "indices": indices,
                "exp_avg": zeros,
                "exp_avg_sq": zeros.clone(),
            }

    def _k(self, shape: tuple[int, int]) -> int:
        k, density, lora_rank = self._entries
        if k is not None:
            return k
        if density is not None:
            return max(1, round(density * shape[0] * shape[1]))
        return lora_equivalent_k(shape, lora_rank)

    def _indices(self, parameter: torch.Tensor) -> torch.Tensor:
        """Sorted flat indices (int32 when they fit, to halve their bytes) of the principal entries
        of each matrix of the parameter."""
        matrices = parameter.detach().reshape(-1, *parameter.shape[-2:])  # [E, m, n], E = 1 for 2-D
        size = matrices.shape[1] * matrices.shape[2]
        k = self._k(tuple(matrices.shape[1:]))
        indices = torch.cat(
            [_principal_indices(w, self.rank, k, self.svd) + e * size for e, w in enumerate(matrices)]
        )
        return indices.to(torch.int32 if parameter.numel() < 2**31 else torch.int64)

    def refresh_mask(self, parameter: torch.nn.Parameter) -> None:
        """Recompute the parameter's mask from its current weights; an entry in both the old and
        the new mask keeps its moments, a new one starts at zero (step count unchanged)."""
        state = self.state[parameter]
        old, new = state["indices"].long(), self._indices(parameter)
        position = torch.searchsorted(old, new.long()).clamp_(max=len(old) - 1)
        kept = old[position] == new.long()
        for moment in ("exp_avg", "exp_avg_sq"):
            state[moment] = torch.where(kept, state[moment][position], 0.0)
        state["indices"] = new

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if state["step"] and state["step"] % self.update_interval == 0:
                    self.refresh_mask(parameter)
                state["step"] += 1
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2_sqrt = math.sqrt(1 - beta2 ** state["step"])
                indices = state["indices"]
                flat = parameter.view(-1)
                grad = parameter.grad.reshape(-1).index_select(0, indices).float()  # [k]
                weights = flat.index_select(0, indices).float()  # [k]
                weights.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(group["eps"])
                weights.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / bias_correction1)
                flat.index_copy_(0, indices.long(), weights.to(flat.dtype))
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load casts every saved state tensor but "step" to its parameter's dtype; LIFT's
        indices are integers (fp32 holds them exactly only below 2^24) and its moments fp32, so
        they are put back as saved (copied onto the parameter's device)."""
        saved = {
            index: {key: state[key] for key in ("indices", "exp_avg", "exp_avg_sq")}
            for index, state in state_dict["state"].items()
        }
        super().load_state_dict(state_dict)
        params = [parameter for group in self.param_groups for parameter in group["params"]]
        for index, tensors in saved.items():
            parameter = params[int(index)]
            for key, tensor in tensors.items():
                self.state[parameter][key] = tensor.to(device=parameter.device, copy=True)

    def state_bytes(self) -> int:
        """Bytes of the optimizer state: moments and indices of every masked entry."""
        return sum(t.nbytes for state in self.state.values() for t in state.values() if torch.is_tensor(t))
