"""The rotary-embedding variants moeweave runs — default, linear (position interpolation) and
YaRN — as frequencies and scale factors, computed exactly as transformers' modeling_rope_utils
does so checkpoints trained with them (DeepSeek-V2/V3, long-context Qwen) keep their logits.
config_fields.py reads the parameters from config.json; RopeTable turns them into cos/sin rows.

Dimension legend: D rotary dims (head_dim, or qk_rope_head_dim under MLA).
"""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RopeScaling:
    """RoPE scaling as config.json's rope_parameters (or legacy rope_scaling) define it."""

    kind: str = "default"  # "default", "linear" or "yarn"
    factor: float = 1.0
    # YaRN only.
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True


NO_SCALING = RopeScaling()


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature for a context stretched by `scale`."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def frequencies(dim: int, theta: float, scaling: RopeScaling) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [D / 2] and the factor transformers multiplies cos and sin by."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim  # [D / 2]
    pos_freqs = theta**exponents  # [D / 2], the unscaled inverse frequencies' reciprocals
    if scaling.kind == "default":
        return 1.0 / pos_freqs, 1.0
    if scaling.kind == "linear":
        return 1.0 / pos_freqs / scaling.factor, 1.0
    return _yarn(dim, theta, scaling, pos_freqs)


def _yarn(dim: int, theta: float, s: RopeScaling, pos_freqs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Dimensions that rotate fewer than beta_slow times over the original context are
    interpolated (divided by factor), those rotating more than beta_fast times extrapolated
    (kept), with a linear ramp between; cos and sin carry the attention factor."""

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
            2 * math.log(theta)
        )

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # [D / 2]
    extrapolated = 1 - ramp
    inv_freq = (1.0 / (s.factor * pos_freqs)) * (1 - extrapolated) + (1.0 / pos_freqs) * extrapolated
    attention_factor = s.attention_factor
    if attention_factor is None:
        if s.mscale and s.mscale_all_dim:
            attention_factor = float(
                yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim)
            )
        else:
            attention_factor = yarn_mscale(s.factor)
    return inv_freq, attention_factor


def mla_softmax_scale(qk_head_dim: int, scaling: RopeScaling) -> float:
    """DeepSeek's MLA softmax scale: 1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)
    squared under a scaled RoPE. YaRN's temperature must reach every query-key dimension, and
    the non-rotary (nope) ones never meet cos and sin, so it goes on the softmax instead."""
    scale = qk_head_dim ** (-0.5)
    if scaling.kind != "default" and scaling.mscale_all_dim:
        mscale = yarn_mscale(scaling.factor, scaling.mscale_all_dim)
        scale = scale * mscale * mscale
    return scale
