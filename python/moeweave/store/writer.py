"""Converting a Hugging Face safetensors checkpoint into an expert store (format: manifest.py and
docs/formats.md).

The conversion streams: one expert's three projections are read, quantised, laid out and written
before the next is touched, so memory holds a few experts plus, at the end, the dense weights.
It is deterministic: experts go in (layer, expert) order, every part at a fixed alignment with
zero padding, and the manifest is written with sorted keys, so the same input gives the same bytes.
"""

import itertools
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from moeweave import _native
from moeweave.quant import quantize
from moeweave.quant.format import SUPPORTED_BITS
from moeweave.store.checkpoint import Checkpoint
from moeweave.store.manifest import (
    ALIGNMENT,
    DENSE_FILE,
    DTYPE_NAMES,
    MANIFEST,
    PART_ALIGNMENT,
    PROJECTIONS,
    Bias,
    Extent,
    Manifest,
    Part,
    Projection,
)

PLAIN_BITS = 16  # a bits value that stores the projection unquantised, as bfloat16
_SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")


def write_store(
    hf_dir: str | Path,
    out_dir: str | Path,
    bits: int | Mapping[str, int] | str | Path = 4,
    group_size: int | None = 64,
    sym: bool = True,
    scale_dtype: torch.dtype = torch.bfloat16,
    method: str | None = None,
    progress: bool = True,
) -> Manifest:
    """Writes the expert store of checkpoint `hf_dir` into `out_dir` (absent or empty).

    bits: one width for every expert (2, 3, 4, 8, or 16 for unquantised bfloat16), or a map
    {"L.E": bits} (a dict or a JSON file) with an optional "default" for experts it omits.
    group_size, sym, scale_dtype and method are moeweave.quant.quantize's.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; write_store needs a new or empty directory")
    crc32c = _native.require_cpu_module().crc32c
    with Checkpoint(hf_dir) as checkpoint:
        experts = checkpoint.experts()
        if not experts:
            raise ValueError(
                f"{checkpoint.directory}: no expert weights found (model_type {checkpoint.architecture!r})"
            )
        widths = _bit_widths(bits, experts)
        out.mkdir(parents=True, exist_ok=True)
        files: list[str] = []
        extents: list[Extent] = []
        with tqdm(total=len(experts), desc="experts", unit="expert", disable=not progress) as bar:
            for layer, group in itertools.groupby(experts, key=lambda key: key[0]):
                files.append(f"experts/layer_{layer:04d}.bin")
                (out / files[-1]).parent.mkdir(exist_ok=True)
                with open(out / files[-1], "wb") as blob:
                    for _, e in group:
                        weights, biases = checkpoint.expert(layer, e)
                        quantised = {
                            p: _encode(weights[p], widths[(layer, e)], group_size, sym, scale_dtype, method)
                            for p in PROJECTIONS
                        }
                        payload, extent = _lay_out(layer, e, quantised, biases)
                        extent.file, extent.offset = len(files) - 1, blob.tell()
                        extent.crc32c = crc32c(payload)
                        blob.write(payload)
                        extents.append(extent)
                        bar.update()
        save_file(checkpoint.dense(), out / DENSE_FILE, metadata={"format": "pt"})
        for path in sorted(checkpoint.directory.iterdir()):
            if (
                path.is_file()
                and path.suffix not in _SKIPPED_SUFFIXES
                and path.name not in (MANIFEST, "model.safetensors.index.json")
            ):
                shutil.copyfile(path, out / path.name)
        manifest = Manifest(checkpoint.architecture, checkpoint.config, files, extents)
    # The manifest goes last: an interrupted conversion leaves no store a reader would accept.
    (out / MANIFEST).write_text(manifest.to_json())
    return manifest


def _bit_widths(
    bits: int | Mapping[str, int] | str | Path, experts: list[tuple[int, int]]
) -> dict[tuple[int, int], int]:
    if isinstance(bits, int):
        mapping: Mapping[str, int] = {"default": bits}
    elif isinstance(bits, Mapping):
        mapping = bits
    else:
        mapping = json.loads(Path(bits).read_text())
    allowed = (*SUPPORTED_BITS, PLAIN_BITS)
    for key, value in mapping.items():
        if value not in allowed:
            raise ValueError(f"bits map: {key!r} = {value!r}; each width must be one of {allowed}")
    known = {f"{layer}.{e}" for layer, e in experts}
    unknown = sorted(set(mapping) - known - {"default"})
    if unknown:
        raise ValueError(
            f"bits map: {unknown[:5]} name no expert of this checkpoint (keys are 'layer.expert')"
        )
    widths = {}
    for layer, e in experts:
        value = mapping.get(f"{layer}.{e}", mapping.get("default"))
        if value is None:
            raise ValueError(f"bits map: no width for expert '{layer}.{e}' and no 'default'")
        widths[(layer, e)] = value
    return widths


def _encode(w, bits, group_size, sym, scale_dtype, method) -> tuple[Projection, dict[str, torch.Tensor]]:
    """w [n, k] -> its manifest entry (parts not yet placed) and the tensors of each part."""
    if bits == PLAIN_BITS:
        return Projection("bf16", list(w.shape), {}), {"weight": w.to(torch.bfloat16).contiguous()}
    qw = quantize(w, bits=bits, group_size=group_size, sym=sym, scale_dtype=scale_dtype, method=method)
    tensors = {"packed": qw.packed, "scales": qw.scales}
    if qw.zeros is not None:
        tensors["zeros"] = qw.zeros
    entry = Projection("quant", [qw.n, qw.k], {}, qw.bits, qw.group_size, qw.sym, DTYPE_NAMES[scale_dtype])
    return entry, tensors


def _lay_out(layer, e, quantised, biases) -> tuple[bytearray, Extent]:
    """Places every part of one expert at PART_ALIGNMENT in one zero-padded, ALIGNMENT-long
    extent; returns its bytes and its manifest entry (file, offset and checksum still to fill)."""
    pieces: list[tuple[int, torch.Tensor]] = []
    cursor = 0

    def place(tensor: torch.Tensor) -> Part:
        nonlocal cursor
        data = tensor.contiguous().view(torch.uint8).reshape(-1)
        part = Part(cursor, data.numel())
        pieces.append((cursor, data))
        cursor = _round_up(cursor + data.numel(), PART_ALIGNMENT)
        return part

    projections = {}
    for name in PROJECTIONS:
        entry, tensors = quantised[name]
        entry.parts = {part: place(t) for part, t in tensors.items()}
        projections[name] = entry
    bias_entries = {
        name: Bias(DTYPE_NAMES[b.dtype], list(b.shape), place(b)) for name, b in sorted(biases.items())
    }
    payload = bytearray(_round_up(cursor, ALIGNMENT))
    for offset, data in pieces:
        payload[offset : offset + data.numel()] = data.numpy().tobytes()
    return payload, Extent(layer, e, -1, -1, len(payload), 0, projections, bias_entries)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
