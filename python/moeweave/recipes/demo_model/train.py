"""Trains the demo MoE causal LM: a real `Qwen3MoeForCausalLM`, small enough for 2 CPU cores.

Batches mix domains (each row is a window from one domain, rows drawn from all domains in
proportion to their size), so the router sees every domain in every step and the load-balancing
aux loss, applied per layer (`balance_loss`), keeps all experts in use while they specialise.

A run is sized either in minutes or in steps. The learning-rate schedule (linear warmup, cosine
decay) is a function of progress in [0, 1], which is elapsed time over the budget or steps over
the step count. A time budget holds however busy the machine is (this recipe shares 2 cores with
compilers and test runs, which can slow a step 5x); a step count repeats a recorded run exactly.

Dimension legend: B batch rows, T window length (tokens), V vocabulary, E routed experts.
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen3MoeConfig, Qwen3MoeForCausalLM


@dataclass
class ModelShape:
    layers: int = 6
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    experts: int = 16
    top_k: int = 2
    expert_hidden: int = 192
    max_positions: int = 1024


@dataclass
class TrainSettings:
    """Exactly one of `steps` and `minutes` sizes the run."""

    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    # OLMoE's coefficient (Qwen3 ships 0.001): the pull that keeps every expert of every layer busy.
    router_aux_loss_coef: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    evals: int = 10


def model_config(
    shape: ModelShape, tokenizer: PreTrainedTokenizerFast, aux_loss_coef: float
) -> Qwen3MoeConfig:
    return Qwen3MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        num_experts=shape.experts,
        num_experts_per_tok=shape.top_k,
        moe_intermediate_size=shape.expert_hidden,
        # Every layer is sparse (decoder_sparse_step=1, no mlp_only_layers), so the dense MLP
        # width is unused; it is set to the total routed width for readers of config.json.
        intermediate_size=shape.top_k * shape.expert_hidden,
        max_position_embeddings=shape.max_positions,
        # Tying saves V*hidden parameters, a large share of a model this small.
        tie_word_embeddings=True,
        # Training asks for router logits per call and applies its own per-layer balance loss
        # (`balance_loss`); the coefficient is recorded here for whoever fine-tunes the model.
        output_router_logits=False,
        router_aux_loss_coef=aux_loss_coef,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    cfg = model.config
    active = total - experts + experts * cfg.num_experts_per_tok // cfg.num_experts
    return {"total": total, "experts": experts, "active_per_token": active}


def domain_batches(
    streams: dict[str, list[int]], batch_size: int, seq_len: int, seed: int
) -> Iterator[torch.Tensor]:
    """Endless [B, T] batches of windows drawn from all domains, reshuffled every epoch.

    Each epoch starts each domain's windows at a fresh random offset, so later epochs see
    different window boundaries instead of repeating the same rows.
    """
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: torch.tensor(ids, dtype=torch.long) for name, ids in streams.items()}
    while True:
        windows = []
        for ids in tensors.values():
            start = int(torch.randint(0, seq_len, (1,), generator=gen))
            n = (len(ids) - start) // seq_len
            windows.append(ids[start : start + n * seq_len].view(n, seq_len))  # [n, T]
        pool = torch.cat(windows)  # [N, T]
        order = torch.randperm(len(pool), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield pool[order[i : i + batch_size]]  # [B, T]


def lr_at(progress: float, s: TrainSettings) -> float:
    if progress < s.warmup_fraction:
        return s.lr * max(progress / s.warmup_fraction, 0.01)
    decay = (progress - s.warmup_fraction) / (1 - s.warmup_fraction)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(decay, 1.0))))


def balance_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Switch-Transformer load-balancing loss of each layer, averaged; equals top_k when balanced.

    transformers' `load_balancing_loss_func` pools the rows of all layers before balancing, so a
    layer may collapse onto two or three experts as long as other layers favour other experts
    (a first smoke run did exactly that); balancing every layer on its own is what Switch and
    Mixtral describe.
    """
    losses = []
    for logits in router_logits:  # each [B*T, E]
        probs = logits.float().softmax(dim=-1)  # [B*T, E]
        top = probs.topk(top_k, dim=-1).indices  # [B*T, k]
        n, experts = probs.shape
        slots = torch.zeros(experts).index_add_(0, top.reshape(-1), torch.ones(top.numel())) / n  # [E]
        losses.append(experts * (slots * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def _forward_backward(model: Qwen3MoeForCausalLM, batch: torch.Tensor, aux_coef: float):
    """One fwd+bwd on a [B, T] batch; returns the (detached) language-model and balance losses."""
    # bf16 autocast measured ~1.35x faster than fp32 for this model on AVX-512 BF16 cores;
    # the fp32 master weights and the optimizer state stay fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=batch, output_router_logits=True)
    logits = out.logits[:, :-1].float()  # [B, T-1, V]
    lm = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    aux = balance_loss(out.router_logits, model.config.num_experts_per_tok)
    (lm + aux_coef * aux).backward()
    return float(lm.detach()), float(aux.detach())


def _optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.AdamW:
    # Norm gains are not decayed: shrinking them only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95), eps=1e-8)


def train(
    model: Qwen3MoeForCausalLM,
    batches: Iterator[torch.Tensor],
    s: TrainSettings,
    heldout_loss: Callable[[Qwen3MoeForCausalLM], dict[str, float]] | None = None,
) -> list[dict]:
    """Runs AdamW until progress reaches 1; returns the loss curve (one row per logged step).

    Rows logged at evaluation points (every 1/`s.evals` of progress, and the last step) also
    carry `heldout_<domain>` mean token losses.
    """
    if (s.steps is None) == (s.minutes is None):
        raise ValueError(
            f"exactly one of steps and minutes must be set, got steps={s.steps} minutes={s.minutes}"
        )
    opt = _optimizer(model, s)
    log_every = max(1, min(25, s.steps // 50)) if s.steps else 25
    curve: list[dict] = []
    window_loss, window_aux, window_n = 0.0, 0.0, 0
    step, progress, next_eval = 0, 0.0, 1 / s.evals
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(total=s.steps or round(s.minutes * 60), desc="train", unit="step" if s.steps else "s")
    while progress < 1:
        lr = lr_at(progress, s)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = next(batches)  # [B, T]
        lm, aux = _forward_backward(model, batch, s.router_aux_loss_coef)
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window_loss += lm
        window_aux += aux
        window_n += 1
        step += 1
        elapsed = time.perf_counter() - t0
        progress = step / s.steps if s.steps else elapsed / (s.minutes * 60)
        bar.update(1 if s.steps else round(min(elapsed, s.minutes * 60)) - bar.n)
        evaluate_now = heldout_loss is not None and (progress >= next_eval - 1e-9 or progress >= 1)
        if step % log_every == 0 or progress >= 1 or evaluate_now:
            row = {
                "step": step,
                "tokens": step * s.batch_size * s.seq_len,
                "elapsed_s": round(elapsed, 1),
                "lr": lr,
                "train_loss": window_loss / window_n,
                "aux_loss": window_aux / window_n,
            }
            bar.set_postfix(step=step, loss=f"{row['train_loss']:.3f}", aux=f"{row['aux_loss']:.3f}")
            if evaluate_now:
                model.eval()
                row.update({f"heldout_{k}": v for k, v in heldout_loss(model).items()})
                model.train()
                next_eval = math.floor(progress * s.evals + 1e-9) / s.evals + 1 / s.evals
                tqdm.write(
                    " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                )
            curve.append(row)
            window_loss, window_aux, window_n = 0.0, 0.0, 0
    bar.close()
    model.eval()
    return curve


def settings_record(shape: ModelShape, s: TrainSettings) -> dict:
    return {"shape": asdict(shape), "train": asdict(s)}
