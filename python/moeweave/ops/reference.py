"""Plain-torch twins of every moeweave op: short and obviously right. They are the oracle the
tests compare the native kernels against, and the fallback when a native module is missing.
"""

import torch
import torch.nn.functional as F

from moeweave.quant.quantize import dequantize


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs (so gradcheck can differentiate the twins numerically)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


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
    return (x.float() @ dequantize(qw).to(x.device).t()).to(x.dtype)


def quant_matmul_t(dy: torch.Tensor, qw) -> torch.Tensor:
    """dy [M, N] @ dequantize(qw) -> [M, K] fp32: the gradient of quant_matmul with respect to x."""
    return dy.float() @ dequantize(qw).to(dy.device)


def expert_weight(w) -> torch.Tensor:
    """A projection of an expert table entry (QuantizedWeight or plain tensor) as fp32 [N, K]."""
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
    dtype = _compute_dtype(q)
    group = q.shape[1] // k.shape[1]
    k, v = (t.to(dtype).repeat_interleave(group, dim=1) for t in (k, v))
    scores = (q.to(dtype) @ k.transpose(-1, -2)) * scale  # [B, nH, S, T]
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (probs @ v).to(q.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * dtype(x * rsqrt(mean(x^2) + eps)), normalised in fp32 (transformers' RMSNorm)."""
    xf = x.to(_compute_dtype(x))
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, D] * cos + rotate_half(x) * sin with cos, sin [S, D], in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


# Gradients of the decode-step ops, the backward formulas their autograd registrations use. They
# compute in fp32 (fp64 stays fp64) and ignore the forward's intermediate roundings to the input
# dtype, as autograd through the formulas above would in fp32.


def rms_norm_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dx [..., H] and dL/dweight [H] of rms_norm for grad = dL/dout [..., H]."""
    dtype = _compute_dtype(x)
    xf, g = x.to(dtype), grad.to(dtype)
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    normed = xf * inv
    d_normed = g * weight.to(dtype)
    dx = inv * (d_normed - normed * (d_normed * normed).mean(-1, keepdim=True))
    dweight = (g * normed).reshape(-1, x.shape[-1]).sum(0)
    return dx.to(x.dtype), dweight.to(weight.dtype)


def _rotate_half_transposed(z: torch.Tensor) -> torch.Tensor:
    """The adjoint of rotate_half: <rotate_half(x), z> = <x, this(z)>."""
    half = z.shape[-1] // 2
    return torch.cat([z[..., half:], -z[..., :half]], dim=-1)


def rope_backward(
    grad: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dL/dx [B, S, H, D], dL/dcos and dL/dsin [S, D] of rope for grad = dL/dout [B, S, H, D]."""
    dtype = _compute_dtype(x)
    xf, g, c, s = (t.to(dtype) for t in (x, grad, cos, sin))
    half = x.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    dx = g * c[:, None] + _rotate_half_transposed(g * s[:, None])
    dcos = (g * xf).sum(dim=(0, 2))
    dsin = (g * rotated).sum(dim=(0, 2))
    return dx.to(x.dtype), dcos.to(cos.dtype), dsin.to(sin.dtype)


def attention_backward(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dL/dq, dL/dk, dL/dv of attention (shapes of q, k, v) for grad = dL/dout [B, nH, S, Dv]."""
    dtype = _compute_dtype(q)
    batch, heads, _, _ = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    group = heads // kv_heads
    qf, g = q.to(dtype), grad.to(dtype)
    kf, vf = (t.to(dtype).repeat_interleave(group, dim=1) for t in (k, v))  # [B, nH, T, D]
    scores = (qf @ kf.transpose(-1, -2)) * scale  # [B, nH, S, T]
    probs = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
    d_probs = g @ vf.transpose(-1, -2)  # [B, nH, S, T]
    d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdim=True)) * scale
    dq = d_scores @ kf
    dk = (d_scores.transpose(-1, -2) @ qf).view(batch, kv_heads, group, keys, -1).sum(2)
    dv = (probs.transpose(-1, -2) @ g).view(batch, kv_heads, group, keys, -1).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def bone_shards(x: torch.Tensor, r: int) -> torch.Tensor:
    """Bone's shard sum: x [..., in] zero-padded to a multiple of r, cut into r-wide shards and
    summed -> [..., r]."""
    pad = -x.shape[-1] % r
    return F.pad(x, (0, pad)).unflatten(-1, (-1, r)).sum(-2)


def bone_bat_weight(weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Bone's block-affine weight W' [..., out, in] from W [..., out, in] and B [..., out/r, r, r]
    (leading dims: experts): each r x r block W_ij of block row i becomes W_ij (I + B_i) + B_i."""
    *lead, out_features, in_features = weight.shape
    r = block.shape[-1]
    w = weight.reshape(*lead, out_features // r, r, in_features // r, r).transpose(
        -3, -2
    )  # [..., out/r, in/r, r, r]
    b = block.unsqueeze(-3)  # [..., out/r, 1, r, r]
    merged = w + w @ b + b
    return merged.transpose(-3, -2).reshape(weight.shape)


def bone_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, block: torch.Tensor, mode: str
) -> torch.Tensor:
    """A Bone-adapted linear layer, x [..., in] -> [..., out]. mode "bat": F.linear with
    bone_bat_weight; "default" (B [r, out]) and "mini" (B [r, mini_r], tiled along out): the base
    output plus bone_shards(x) @ B."""
    if mode == "bat":
        return F.linear(x, bone_bat_weight(weight, block), bias)
    tiled = block.repeat(1, weight.shape[0] // block.shape[1])  # [r, out]
    return F.linear(x, weight, bias) + bone_shards(x, block.shape[0]) @ tiled
