"""Plain-torch twins of every moeweave op: short and obviously right. They are the oracle the
tests compare the native kernels against, and the fallback when a native module is missing.
"""

import torch
import torch.nn.functional as F


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, computed in fp32 and rounded once to the input dtype."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def reroute(topk_ids: torch.Tensor, tok_adapter: torch.Tensor, remap: torch.Tensor) -> torch.Tensor:
    """phys_ids[t, k] = remap[tok_adapter[t] + 1, topk_ids[t, k]]: row 0 of remap is the base model.

    topk_ids [T, K] int32, tok_adapter [T] int32 (-1 = base model), remap [A + 1, E] int32
    -> [T, K] int32. Out-of-range adapters or ids raise ValueError (torch indexing would wrap
    negative ids silently).
    """
    num_adapters, num_experts = remap.shape[0] - 1, remap.shape[1]
    if topk_ids.numel() and (topk_ids.min() < 0 or topk_ids.max() >= num_experts):
        raise ValueError(f"reroute: 'topk_ids' must lie in [0, {num_experts})")
    if tok_adapter.numel() and (tok_adapter.min() < -1 or tok_adapter.max() >= num_adapters):
        raise ValueError(f"reroute: 'tok_adapter' must lie in [-1, {num_adapters})")
    rows = (tok_adapter.long() + 1).unsqueeze(1)  # [T, 1]
    return remap[rows, topk_ids.long()]  # [T, K]


def quant_matmul(x: torch.Tensor, qw) -> torch.Tensor:
    """x [M, K] @ dequantize(qw)^T -> [M, N] in x's dtype, in fp32 with exact activations."""
    from moeweave.quant.quantize import dequantize

    return (x.float() @ dequantize(qw).to(x.device).t()).to(x.dtype)


def expert_weight(w) -> torch.Tensor:
    """A projection of an expert table entry (QuantizedWeight or plain tensor) as fp32 [N, K]."""
    from moeweave.quant.quantize import dequantize

    return w.float() if isinstance(w, torch.Tensor) else dequantize(w)


def moe_experts(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, experts) -> torch.Tensor:
    """y[t] = sum_k topk_weights[t, k] * down(silu(gate x_t) * up x_t) with e = topk_ids[t, k], as a
    loop over experts. x [T, H]; topk_ids, topk_weights [T, K]; experts: sequence of
    (gate [I, H], up [I, H], down [H, I]) -> [T, H] in x's dtype, computed in fp32."""
    xf = x.float()
    y = torch.zeros_like(xf)  # [T, H]
    for e in topk_ids.unique().tolist():
        token, slot = (topk_ids == e).nonzero(as_tuple=True)
        gate, up, down = (expert_weight(w).to(x.device) for w in experts[e])
        h = F.silu(xf[token] @ gate.t()) * (xf[token] @ up.t())  # [n_e, I]
        y.index_add_(0, token, (h @ down.t()) * topk_weights[token, slot, None].float())
    return y.to(x.dtype)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v in fp32 with grouped heads; q [B, nH, S, Dk], k [B, nKV,
    T, Dk], v [B, nKV, T, Dv], mask [B, S, T] bool -> [B, nH, S, Dv] in q's dtype. Rows that may
    attend to nothing are zeros."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(group, dim=1) for t in (k, v))
    scores = (q.float() @ k.transpose(-1, -2)) * scale  # [B, nH, S, T]
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (probs @ v).to(q.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * dtype(x * rsqrt(mean(x^2) + eps)), normalised in fp32 (transformers' RMSNorm)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, D] * cos + rotate_half(x) * sin with cos, sin [S, D], in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]
