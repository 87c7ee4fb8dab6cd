"""Weight-only quantisers: round-to-nearest, and an MSE-optimal clipping search that INT2/INT3
experts need (plain RTN wastes most of a 2-bit range on a few outliers). CPU tensors go through
the native quantiser (csrc/kernels/cpu/quantize.cpp, 6-50x faster on a checkpoint's projections:
docs/benchmarks.md); the plain-torch one here is its reference and serves CUDA tensors.

Dimension legend: N rows, K columns of W [N, K]; Np, Kp padded; G groups per row, g group size.
"""

from typing import Literal

import torch
from torch.utils.dlpack import to_dlpack

from moeweave import _native
from moeweave.quant.finite import require_finite
from moeweave.quant.format import (
    SCALE_DTYPES,
    SUPPORTED_BITS,
    TILE_ROWS,
    UNIT_COLS,
    QuantizedWeight,
    padded,
    unit_bytes,
)
from moeweave.quant.pack import pack, unpack

# Fractions of the full range tried by the MSE search, largest first (ties keep the wider range).
_CLIP_RATIOS = torch.linspace(1.0, 0.5, 21).tolist()
_ROW_CHUNK = 2048  # rows quantised and packed at once (a multiple of TILE_ROWS): bounds temporaries


def quantize(
    w: torch.Tensor,
    bits: int = 4,
    group_size: int | None = 64,
    sym: bool = True,
    scale_dtype: torch.dtype = torch.bfloat16,
    method: Literal["rtn", "mse"] | None = None,
) -> QuantizedWeight:
    """Quantise w [N, K] to `bits` (2, 3, 4, 8) with one scale (and zero, if not `sym`) per row and
    group of `group_size` columns (a multiple of 32; None = per channel).

    method "rtn" rounds to nearest with the full range; "mse" searches, per group, the clipping
    of the range that minimises the squared error. Default: "mse" for 2 and 3 bits, else "rtn".
    A NaN or infinity in w is refused (ValueError naming its index).
    """
    if w.dim() != 2:
        raise ValueError(f"quantize: 'w' must be a 2-D [N, K] weight, got {list(w.shape)}")
    require_finite(w, "quantize: 'w'")
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"quantize: bits must be one of {SUPPORTED_BITS}, got {bits}")
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"quantize: scale_dtype must be float32, float16 or bfloat16, got {scale_dtype}")
    k = w.shape[1]
    group = padded(max(k, 1), UNIT_COLS) if group_size is None else group_size
    if group <= 0 or group % UNIT_COLS:
        raise ValueError(f"quantize: group_size must be a positive multiple of 32 or None, got {group_size}")
    method = method or ("mse" if bits <= 3 else "rtn")
    if method not in ("rtn", "mse"):
        raise ValueError(f"quantize: method must be 'rtn' or 'mse', got {method!r}")

    if w.device.type == "cpu" and (native := _native.cpu_module()) is not None:
        return _quantize_native(native, w, bits, group, sym, scale_dtype, method)
    return _quantize_torch(w, bits, group, sym, scale_dtype, method)


def _quantize_native(native, w, bits, group, sym, scale_dtype, method) -> QuantizedWeight:
    """One native pass over w: the bytes of _quantize_torch for "rtn"; for "mse", the same search
    with its errors summed in another order (a near-tie may pick the other clipping)."""
    n, k = w.shape
    rows, cols = padded(n, TILE_ROWS), padded(k, group)
    if w.dtype not in SCALE_DTYPES:  # the native reader takes the same three float types
        w = w.float()
    if w.stride(-1) != 1:
        w = w.contiguous()
    packed = torch.empty(rows // TILE_ROWS, cols // UNIT_COLS, unit_bytes(bits), dtype=torch.uint8)
    scales = torch.empty(rows // TILE_ROWS, cols // group, TILE_ROWS, dtype=scale_dtype)
    zeros = None if sym else torch.empty_like(scales)
    ratios = _CLIP_RATIOS if method == "mse" else _CLIP_RATIOS[:1]
    zeros_capsule = None if zeros is None else to_dlpack(zeros)
    native.quant_quantize(to_dlpack(w.detach()), bits, group, sym, ratios, to_dlpack(packed), to_dlpack(scales),
                          zeros_capsule)  # fmt: skip
    return QuantizedWeight(packed=packed, scales=scales, zeros=zeros, n=n, k=k, bits=bits, group_size=group)


def _quantize_torch(w, bits, group, sym, scale_dtype, method) -> QuantizedWeight:
    """The plain-torch quantiser: any device, both methods; the native path's reference."""
    n, k = w.shape
    rows, cols = padded(n, TILE_ROWS), padded(k, group)
    groups = cols // group
    q = torch.zeros(rows, cols, dtype=torch.uint8, device=w.device)
    scales = torch.ones(rows, groups, dtype=torch.float32, device=w.device)
    zeros = None if sym else torch.zeros(rows, groups, dtype=torch.float32, device=w.device)
    for start in range(0, n, _ROW_CHUNK):
        stop = min(n, start + _ROW_CHUNK)
        block = torch.zeros(stop - start, cols, dtype=torch.float32, device=w.device)
        block[:, :k] = w[start:stop].float()
        valid = torch.zeros(cols, dtype=torch.bool, device=w.device)
        valid[:k] = True
        q_b, s_b, z_b = _quantize_groups(
            block.view(stop - start, groups, group), valid.view(groups, group), bits, sym, scale_dtype, method
        )
        q[start:stop] = q_b.view(stop - start, cols)
        scales[start:stop] = s_b
        if zeros is not None:
            zeros[start:stop] = z_b

    def tile_major(t: torch.Tensor) -> torch.Tensor:  # [Np, G] -> [T16, G, 16]
        return t.view(rows // TILE_ROWS, TILE_ROWS, groups).transpose(1, 2).contiguous().to(scale_dtype)

    # Packing widens its input on the way; a row chunk at a time keeps that to the chunk's size
    # (an empty weight is one empty chunk).
    chunks = range(0, max(rows, 1), _ROW_CHUNK)
    packed = torch.cat([pack(q[start : start + _ROW_CHUNK], bits) for start in chunks])
    return QuantizedWeight(
        packed=packed.contiguous(),
        scales=tile_major(scales),
        zeros=None if zeros is None else tile_major(zeros),
        n=n,
        k=k,
        bits=bits,
        group_size=group,
    )


def _quantize_groups(w, valid, bits, sym, scale_dtype, method):
    """w [R, G, g] fp32 (padding columns are 0 and `valid` [G, g] False) -> q [R, G, g] uint8,
    scale [R, G], zero [R, G] (None when symmetric), scales already rounded to scale_dtype."""
    levels = (1 << bits) - 1
    offset = 1 << (bits - 1)
    if sym:
        absmax = w.abs().amax(dim=-1)  # [R, G]; padding is 0 and cannot raise it
        top = float(offset - 1) if bits > 1 else 1.0
        full = (absmax, None)
    else:
        hi = w.masked_fill(~valid, float("-inf")).amax(dim=-1).clamp(min=0)  # keep 0 representable
        lo = w.masked_fill(~valid, float("inf")).amin(dim=-1).clamp(max=0)
        full = (lo, hi)

    def candidate(ratio: float):
        if sym:
            scale = (full[0] * ratio / top).to(scale_dtype).float()
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.clamp(torch.round(w / scale[..., None]), -offset, offset - 1) + offset
            zero = torch.full_like(scale, float(offset))
        else:
            lo, hi = full[0] * ratio, full[1] * ratio
            scale = ((hi - lo) / levels).to(scale_dtype).float()
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            zero = torch.clamp(torch.round(-lo / scale), 0, levels)
            q = torch.clamp(torch.round(w / scale[..., None]) + zero[..., None], 0, levels)
        error = ((scale[..., None] * (q - zero[..., None]) - w) ** 2 * valid).sum(-1)  # [R, G]
        return q, scale, zero, error

    best_q, best_scale, best_zero, best_error = candidate(1.0)
    if method == "mse":
        for ratio in _CLIP_RATIOS[1:]:
            q, scale, zero, error = candidate(ratio)
            better = error < best_error
            best_q = torch.where(better[..., None], q, best_q)
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
            best_error = torch.where(better, error, best_error)
    return best_q.to(torch.uint8), best_scale, None if sym else best_zero


def dequantize(qw: QuantizedWeight) -> torch.Tensor:
    """The weight a QuantizedWeight stands for: [n, k] float32, scale * (q - zero)."""
    q = unpack(qw.packed, qw.bits).float()  # [Np, Kp]
    rows = q.shape[0]

    def per_value(t: torch.Tensor) -> torch.Tensor:  # [T16, G, 16] -> [Np, Kp]
        return t.float().transpose(1, 2).reshape(rows, -1).repeat_interleave(qw.group_size, dim=1)

    zero = per_value(qw.zeros) if qw.zeros is not None else float(1 << (qw.bits - 1))
    return (per_value(qw.scales) * (q - zero))[: qw.n, : qw.k].contiguous()


def relative_error(w: torch.Tensor, qw: QuantizedWeight) -> float:
    """||W - dequantize(W)||_F / ||W||_F."""
    w = w.float()
    return float((dequantize(qw).to(w.device) - w).norm() / w.norm().clamp(min=1e-30))
