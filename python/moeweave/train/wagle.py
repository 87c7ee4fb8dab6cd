"""WAGLE: weight attribution for unlearning (Jia et al., NeurIPS 2024, arXiv 2410.17509;
../shared/SPEC.md §6) on transformers' causal LMs: score every trainable weight by how much
unlearning the forget set through it would cost the retain set, keep the top fraction, and let the
unlearning method (GradDiff or NPO, both here) change only those weights.

    scores = wagle.attribution_scores(model, forget_batches, retain_batches, method="wagle")
    mask = wagle.top_ratio_mask(scores, ratio=0.1)            # {name: bool tensor}
    reference = copy.deepcopy(model).requires_grad_(False)    # frozen, for NPO
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    wagle.mask_updates(optimizer, model, mask)                # each step changes masked-in weights only
    for forget, retain in zip(forget_batches, retain_batches):
        wagle.npo_loss(model, reference, forget, retain).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(); optimizer.zero_grad()

Scores, per scalar weight i of the trainable parameters, with g_f and g_r the gradients of the
plain LM loss (the mean next-token cross-entropy of a batch, without any MoE auxiliary loss)
summed over the forget and the retain batches:
    wagle      S_i = (θ_i − g_r,i / γ) · g_f,i
    snip       S_i = θ_i · g_f,i
    gradient   S_i = g_f,i
    magnitude  S_i = θ_i
    random     S_i ~ U[0, 1), from a generator seeded with `seed`
Read WAGLE's score as: θ − g_r/γ is the weight after one Newton step on the retain loss with a
diagonal Hessian H ≈ γI (the reference code's γ = 1e-3), and S_i, up to sign, the first-order change
of the forget loss if that weight were removed: how much forgetting leans on the weight where
retaining is preserved. Only |S| matters, so the sign convention of g_f (plain loss or its
negation) does not.

Mask: the k = max(1, round(ratio · N)) weights of largest |S| among all N scored weights at once,
with no per-layer quota, so layers the forget set leans on may keep most of their weights and
others none. Equal |S| are broken by position: the parameter earlier in `scores`' order (the
model's parameter order), then the lower flat index.

Unlearning with the mask: masked-out gradients are zeroed after clipping (so the clip norm sees the
full gradient) and before the step, and weight decay must not touch masked-out
weights. `mask_updates` does both inside the optimizer, as a step pre-hook (so it also holds under
transformers.Trainer, which clips and then calls step): it zeroes the gradients and applies the
optimizer's own decoupled decay θ ← θ (1 − lr·wd) to masked-in weights only, having set the
groups' weight_decay to 0. With AdamW a weight whose gradient was zero from the first step has zero
moments and so a zero update: masked-out weights stay bit-identical. `mask_gradients` is the bare
zeroing, for loops without weight decay.

Losses, CE being the mean token cross-entropy of a batch and γ_r = `retain_weight`:
    GradDiff  L = −CE_θ(D_f) + γ_r CE_θ(D_r)
    NPO       L = −(2/β) mean_s log σ(β (NLL_θ(s) − NLL_ref(s))) + γ_r CE_θ(D_r)
NLL(s) is a forget sequence's summed token negative log-likelihood, −log π(s): NPO (Zhang et al.
2024) is defined on sequence likelihood ratios, −β log(π_θ/π_ref) = β (NLL_θ − NLL_ref). Minimising
L raises σ's argument, i.e. lowers the model's likelihood of forget sequences relative to the
frozen reference (computed without gradients); at θ = ref its gradient is −mean_s ∇NLL_θ(s), plain
gradient ascent, and it fades as the ratio grows, which is what keeps NPO from diverging.

Batches are input_ids tensors [B, T] or dicts of model keyword arguments; without `labels` the
labels are the input_ids with padding (attention_mask == 0) excluded.

Dimension legend: B sequences, T tokens, V vocabulary, N scored weights, k weights kept.
"""

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

METHODS = ("wagle", "snip", "gradient", "magnitude", "random")
IGNORE = -100  # transformers' label of tokens that carry no loss


def _token_nll(model: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The next-token negative log-likelihoods [B, T-1] fp32 (0 where unlabelled) of a batch and
    the mask [B, T-1] of its labelled tokens."""
    if isinstance(batch, torch.Tensor):
        inputs = {"input_ids": batch}
    elif isinstance(batch, Mapping):
        inputs = dict(batch)
    else:
        raise ValueError(f"wagle: a batch is an input_ids tensor or a dict, got {type(batch).__name__}")
    labels = inputs.pop("labels", None)
    if labels is None:
        if "input_ids" not in inputs:
            raise ValueError("wagle: a batch dict without labels needs input_ids")
        attention = inputs.get("attention_mask")
        ids = inputs["input_ids"]
        labels = ids if attention is None else ids.masked_fill(attention == 0, IGNORE)
    logits = model(**inputs).logits[:, :-1].float()  # [B, T-1, V]
    targets = labels[:, 1:]  # [B, T-1]
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(targets.shape)
    labelled = targets != IGNORE
    if not labelled.any():
        raise ValueError("wagle: a batch has no labelled tokens (all padding or label -100)")
    return nll, labelled


def _mean_nll(model: torch.nn.Module, batch) -> torch.Tensor:
    """The plain LM loss of a batch: its mean token cross-entropy (transformers' loss without any
    auxiliary term)."""
    nll, labelled = _token_nll(model, batch)
    return nll.sum() / labelled.sum()


def _summed_gradients(
    model: torch.nn.Module, params: list[torch.Tensor], batches: Iterable, which: str
) -> list[torch.Tensor]:
    """Σ over batches of the plain LM loss's gradient, per parameter (fp32). torch.autograd.grad
    leaves the parameters' .grad as the caller had them."""
    total = None
    for batch in batches:
        grads = torch.autograd.grad(_mean_nll(model, batch), params, allow_unused=True)
        if total is None:
            total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        for accumulated, grad in zip(total, grads, strict=True):
            if grad is not None:  # a parameter the batch never reached (e.g. an unrouted expert)
                accumulated += grad.float()
    if total is None:
        raise ValueError(f"wagle: {which}_batches is empty")
    return total


def attribution_scores(
    model: torch.nn.Module,
    forget_batches: Iterable,
    retain_batches: Iterable,
    method: str = "wagle",
    gamma: float = 1e-3,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """{name: score tensor (fp32, the parameter's shape)} over the model's trainable parameters,
    by `method` (see the module docstring). Gradients are taken in the model's current mode
    (call model.eval() first for dropout-free scores); wagle reads both batch sets, snip and
    gradient the forget batches only, magnitude and random neither."""
    if method not in METHODS:
        raise ValueError(f"wagle: method must be one of {METHODS}, got {method!r}")
    if not gamma > 0:
        raise ValueError(f"wagle: gamma must be positive, got {gamma}")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"wagle: {type(model).__name__} has no trainable parameters to score")
    names = [name for name, _ in named]
    params = [p for _, p in named]
    thetas = [p.detach().float() for p in params]
    if method == "magnitude":
        return {name: theta.clone() for name, theta in zip(names, thetas, strict=True)}
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return {name: torch.rand(p.shape, generator=generator).to(p.device) for name, p in named}
    g_f = _summed_gradients(model, params, forget_batches, "forget")
    if method == "gradient":
        return dict(zip(names, g_f, strict=True))
    if method == "snip":
        return {name: t * g for name, t, g in zip(names, thetas, g_f, strict=True)}
    g_r = _summed_gradients(model, params, retain_batches, "retain")
    return {name: (t - r / gamma) * f for name, t, r, f in zip(names, thetas, g_r, g_f, strict=True)}


def top_ratio_mask(scores: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """{name: bool tensor} keeping the k = max(1, round(ratio · N)) weights of largest |score| over
    all N weights of `scores` together; ties go to the earlier parameter, then the lower flat
    index. Memory: one fp32 copy of all |scores| [N] and a bool [N]; time O(N) (a selection, not
    a sort)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"wagle: ratio must be in (0, 1], got {ratio}")
    if not scores:
        raise ValueError("wagle: top_ratio_mask got no scores")
    for name, score in scores.items():
        if torch.isnan(score).any():
            raise ValueError(f"wagle: the scores of {name} hold NaN")
    device = next(iter(scores.values())).device
    flat = torch.cat(
        [score.detach().reshape(-1).abs().float().to(device) for score in scores.values()]
    )  # [N]
    if not flat.numel():
        raise ValueError("wagle: top_ratio_mask got only empty score tensors")
    count = max(1, round(ratio * flat.numel()))
    threshold = torch.kthvalue(flat, flat.numel() - count + 1).values  # the k-th largest |S|
    kept = flat > threshold
    # Of the weights equal to the threshold, the first ones in concatenation order fill the count:
    # the deterministic tie rule (topk's choice among ties is unspecified).
    ties = (flat == threshold).nonzero().squeeze(1)
    kept[ties[: count - int(kept.sum())]] = True
    masks, start = {}, 0
    for name, score in scores.items():
        masks[name] = kept[start : start + score.numel()].view(score.shape).to(score.device)
        start += score.numel()
    return masks


def _masked_parameters(
    model: torch.nn.Module, mask: dict[str, torch.Tensor]
) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(parameter, its bool mask on the parameter's device) for every name of `mask`, checked."""
    params = dict(model.named_parameters())
    pairs = []
    for name, keep in mask.items():
        if name not in params:
            raise ValueError(f"wagle: the mask names {name}, which is not a parameter of the model")
        p = params[name]
        if keep.dtype != torch.bool or keep.shape != p.shape:
            raise ValueError(
                f"wagle: the mask of {name} must be bool of shape {tuple(p.shape)}, "
                f"got {keep.dtype} {tuple(keep.shape)}"
            )
        pairs.append((p, keep.to(p.device)))
    return pairs


def mask_gradients(model: torch.nn.Module, mask: dict[str, torch.Tensor]) -> None:
    """Zero, in place, the gradients of the weights `mask` leaves out (parameters without a
    gradient are skipped; parameters the mask does not name keep theirs). Call it after clipping
    and before optimizer.step(); with weight decay, use mask_updates instead."""
    for p, keep in _masked_parameters(model, mask):
        if p.grad is not None:
            p.grad.masked_fill_(~keep, 0.0)


def mask_updates(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, mask: dict[str, torch.Tensor]
) -> None:
    """From now on every optimizer.step() changes only the weights `mask` keeps (parameters the
    mask does not name train as usual): a step pre-hook zeroes the masked-out gradients (after any
    clipping, which happens before step) and applies the groups' decoupled weight decay to the
    masked-in weights only. The optimizer must not have stepped yet (moments it already holds
    would keep moving masked-out weights) and its weight decay, if any, must be decoupled
    (AdamW, Adam(decoupled_weight_decay=True)): an L2 decay enters the gradient inside step()."""
    if optimizer.state:
        raise ValueError("wagle: mask_updates needs an optimizer that has not stepped yet")
    for index, group in enumerate(optimizer.param_groups):
        if "wagle_weight_decay" in group:
            raise ValueError("wagle: mask_updates was already applied to this optimizer")
        if group.get("weight_decay", 0) and not group.get("decoupled_weight_decay", False):
            raise ValueError(
                f"wagle: group {index} of {type(optimizer).__name__} has weight_decay "
                f"{group['weight_decay']} applied through the gradient, which would move masked-out "
                "weights; use AdamW or weight_decay=0"
            )
    pairs = _masked_parameters(model, mask)
    masks = {id(p): keep for p, keep in pairs}
    for group in optimizer.param_groups:
        group["wagle_weight_decay"] = group.get("weight_decay", 0)
        if "weight_decay" in group:
            group["weight_decay"] = 0.0

    def before_step(optimizer, args, kwargs):
        with torch.no_grad():
            for p, keep in pairs:
                if p.grad is not None:
                    p.grad.masked_fill_(~keep, 0.0)
            for group in optimizer.param_groups:
                if not group["wagle_weight_decay"]:
                    continue
                factor = 1 - group["lr"] * group["wagle_weight_decay"]
                for p in group["params"]:
                    if p.grad is None:  # AdamW skips such a parameter, its decay included
                        continue
                    keep = masks.get(id(p))
                    # p * factor is AdamW's own decay expression, so kept weights decay bit for bit.
                    p.copy_(p * factor if keep is None else torch.where(keep, p * factor, p))

    optimizer.register_step_pre_hook(before_step)


def graddiff_loss(
    model: torch.nn.Module, forget_batch, retain_batch, retain_weight: float = 1.0
) -> torch.Tensor:
    """GradDiff: −CE(forget_batch) + retain_weight · CE(retain_batch), a scalar to minimise."""
    if not retain_weight >= 0:
        raise ValueError(f"wagle: retain_weight must be >= 0, got {retain_weight}")
    return -_mean_nll(model, forget_batch) + retain_weight * _mean_nll(model, retain_batch)


def npo_loss(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    forget_batch,
    retain_batch,
    beta: float = 0.1,
    retain_weight: float = 1.0,
) -> torch.Tensor:
    """NPO: −(2/β) mean over forget sequences of log σ(β (NLL_θ − NLL_ref)) + retain_weight ·
    CE(retain_batch), NLL a sequence's summed token negative log-likelihood; `reference` is a
    frozen copy of the model before unlearning, run without gradients. Minimising it lowers the
    forget sequences' likelihood (module docstring)."""
    if not beta > 0:
        raise ValueError(f"wagle: beta must be positive, got {beta}")
    if not retain_weight >= 0:
        raise ValueError(f"wagle: retain_weight must be >= 0, got {retain_weight}")
    if reference is model:
        raise ValueError("wagle: the reference must be a frozen copy of the model, not the model itself")
    nll, _ = _token_nll(model, forget_batch)
    with torch.no_grad():
        reference_nll, _ = _token_nll(reference, forget_batch)
    log_ratio = nll.sum(dim=1) - reference_nll.sum(dim=1)  # [B], −log(π_θ / π_ref) per sequence
    forget = -(2 / beta) * F.logsigmoid(beta * log_ratio).mean()
    return forget + retain_weight * _mean_nll(model, retain_batch)
