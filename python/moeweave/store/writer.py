"""Converting a Hugging Face safetensors checkpoint into an expert store (format: manifest.py and
docs/formats.md).

The conversion streams: one expert's three projections are read, quantised, laid out and written
before the next is touched, so memory holds a few experts plus, at the end, the dense weights.
It is deterministic: experts go in (layer, expert) order, every part at a fixed alignment with
zero padding, and the manifest is written with sorted keys, so the same input gives the same bytes.
It is all or nothing: the store is written into a hidden sibling directory and renamed into place
at the end, and a conversion that fails (a NaN in a weight, Ctrl-C) removes it, so nothing is left
that blocks the next attempt. Only known configuration and tokenizer files come along, never
through a symlink out of the checkpoint directory.
"""

import contextlib
import itertools
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from moeweave import _native
from moeweave.formats.paths import confined
from moeweave.quant import quantize
from moeweave.quant.format import SUPPORTED_BITS
from moeweave.quant.policy import SYMMETRIC_FROM as POLICY_SYMMETRIC_FROM
from moeweave.store.checkpoint import ExpertCheckpoint
from moeweave.store.manifest import (
    ALIGNMENT,
    DENSE_FILE,
    DTYPE_NAMES,
    MANIFEST,
    PART_ALIGNMENT,
    PLAIN_BITS,
    PROJECTIONS,
    Bias,
    ExpertDims,
    Extent,
    Manifest,
    Part,
    ProjectionLayout,
    expert_dims,
)

# The files of a Hugging Face checkpoint directory that travel with the store: configs, the
# tokenizer in its forms (fast, SentencePiece, BPE vocab and merges, Mistral's tekken), chat
# templates, model card and licences. Nothing else: not weights, not remote code (modeling_*.py),
# not whatever else someone left in the directory.
COPIED_FILES = (
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "merges.txt", "tekken.json",
    "chat_template.jinja", "chat_template.json",
    "README.md", "LICENSE", "LICENSE.txt", "LICENSE.md", "LICENSE-CODE", "LICENSE-MODEL", "NOTICE",
    "USAGE_POLICY",
)  # fmt: skip


def write_store(
    hf_dir: str | Path,
    out_dir: str | Path,
    bits: int | Mapping[str, int] | str | Path = 4,
    group_size: int | None = 64,
    sym: bool | None = True,
    scale_dtype: torch.dtype = torch.bfloat16,
    method: str | None = None,
    progress: bool = True,
) -> Manifest:
    """Writes the expert store of checkpoint `hf_dir` into `out_dir` (absent or empty).

    bits: one width for every expert (2, 3, 4, 8, or 16 for unquantised bfloat16), or a map
    {"L.E": bits} (a dict or a JSON file) with an optional "default" for experts it omits. Widths
    are integers: 4.0, "4" or True are refused.
    group_size, sym, scale_dtype and method are moeweave.quant.quantize's; sym=None chooses per
    width as moeweave.quant.policy does (symmetric at 8 and 4 bits, asymmetric at 3 and 2), so a
    store holds exactly what moeweave.models.load(experts="intN") computes with.
    """
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "not empty" if out.is_dir() else "not a directory"
        raise FileExistsError(f"{out}: {what}; write_store needs a new or empty directory")
    crc32c = _native.require_cpu_module().crc32c
    with ExpertCheckpoint(hf_dir) as checkpoint:
        dims = expert_dims(checkpoint.architecture, checkpoint.config)
        experts = checkpoint.experts()
        if not experts:
            raise ValueError(
                f"{checkpoint.directory}: no expert weights found (model_type {checkpoint.architecture!r})"
            )
        widths = _bit_widths(bits, experts)
        copied = _copied_files(checkpoint.directory)
        with _staging(out) as staging:
            options = dict(group_size=group_size, sym=sym, scale_dtype=scale_dtype, method=method)
            files, extents = _write_experts(checkpoint, staging, dims, widths, options, crc32c, progress)
            save_file(checkpoint.dense(), staging / DENSE_FILE, metadata={"format": "pt"})
            for name, source in copied:
                shutil.copyfile(source, staging / name)
            manifest = Manifest(checkpoint.architecture, checkpoint.config, files, extents)
            (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _write_experts(
    checkpoint: ExpertCheckpoint,
    staging: Path,
    dims: ExpertDims,
    widths: dict,
    options: dict,
    crc32c,
    progress: bool,
) -> tuple[list[str], list[Extent]]:
    """Writes one blob per layer, expert by expert; returns the blob names and the extents."""
    files: list[str] = []
    extents: list[Extent] = []
    experts = checkpoint.experts()
    # disable is passed only to hide the bar: tqdm's TQDM_DISABLE applies to what is not passed.
    hidden = {} if progress else {"disable": True}
    with tqdm(total=len(experts), desc="experts", unit="expert", **hidden) as bar:
        for layer, group in itertools.groupby(experts, key=lambda key: key[0]):
            files.append(f"experts/layer_{layer:04d}.bin")
            (staging / files[-1]).parent.mkdir(exist_ok=True)
            with open(staging / files[-1], "wb") as blob:
                for _, e in group:
                    weights, biases = checkpoint.expert(layer, e)
                    _check_shapes(checkpoint.directory, layer, e, dims, weights, biases)
                    quantised = {p: _encode(weights[p], widths[(layer, e)], **options) for p in PROJECTIONS}
                    payload, extent = _lay_out(layer, e, quantised, biases)
                    extent.file, extent.offset = len(files) - 1, blob.tell()
                    extent.crc32c = crc32c(payload)
                    blob.write(payload)
                    extents.append(extent)
                    bar.update()
    return files, extents


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A new hidden sibling of `out` to write the store into: renamed to `out` when the block
    succeeds (rename replaces an empty directory), removed when it fails in any way, Ctrl-C
    included. A sibling, so the rename stays on one filesystem."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        if out.is_dir():  # the user's own empty directory: keep its permissions
            shutil.copymode(out, staging)
        try:
            os.replace(staging, out)
        except OSError as error:
            raise FileExistsError(f"{out}: {error.strerror}; it was filled during the conversion") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copied_files(directory: Path) -> list[tuple[str, Path]]:
    """(name, resolved source) of each COPIED_FILES file the checkpoint has; ValueError for one
    that leads out of the directory (a symlink to a secret must not land in the store)."""
    found = []
    for name in COPIED_FILES:
        path = directory / name
        if path.is_symlink() or path.exists():
            source = confined(directory, name, str(directory))
            if source.is_file():
                found.append((name, source))
    return found


def _check_shapes(directory: Path, layer: int, e: int, dims: ExpertDims, weights: dict, biases: dict) -> None:
    """The expert's sizes against config.json, before any work: a store whose shapes contradict its
    config is refused by every reader."""
    for p in PROJECTIONS:
        want = list(dims.shape(p))
        if list(weights[p].shape) != want:
            raise ValueError(
                f"{directory}: layer {layer} expert {e} {p} weight has shape {list(weights[p].shape)}, but "
                f"config.json (hidden_size {dims.hidden}, {dims.intermediate_key} {dims.intermediate}) makes it {want}"
            )
        if p in biases and list(biases[p].shape) != want[:1]:
            raise ValueError(
                f"{directory}: layer {layer} expert {e} {p} bias has shape {list(biases[p].shape)}, expected {want[:1]}"
            )


def read_bits_map(path: str | Path) -> dict:
    """The JSON object {"layer.expert": bits, "default": bits} in file `path` (its widths are
    checked against the checkpoint by write_store); ValueError naming the file otherwise."""
    where = f"bits map {path}"
    try:
        mapping = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where}: not a UTF-8 JSON file ({error})") from None
    if not isinstance(mapping, dict):
        raise ValueError(
            f'{where}: must be a JSON object {{"layer.expert": bits}}, not a {type(mapping).__name__}'
        )
    return mapping


def _bit_widths(
    bits: int | Mapping[str, int] | str | Path, experts: list[tuple[int, int]]
) -> dict[tuple[int, int], int]:
    allowed = (*SUPPORTED_BITS, PLAIN_BITS)
    if isinstance(bits, (str, Path)):
        where, mapping = f"bits map {bits}", read_bits_map(bits)
    elif isinstance(bits, Mapping):
        where, mapping = "bits map", bits
    elif isinstance(bits, int) and not isinstance(bits, bool):
        where, mapping = "bits", {"default": bits}
    else:
        raise ValueError(
            f"bits must be a width {allowed}, a map {{'layer.expert': width}} or a JSON file of one, got {bits!r}"
        )
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: key {key!r} is not a string; keys are 'layer.expert' or 'default'")
        if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
            raise ValueError(
                f"{where}: {key!r} = {value!r}; each width must be one of {allowed} (an integer)"
            )
    known = {f"{layer}.{e}" for layer, e in experts}
    unknown = sorted(set(mapping) - known - {"default"})
    if unknown:
        raise ValueError(
            f"{where}: {unknown[:5]} name no expert of this checkpoint (keys are 'layer.expert')"
        )
    widths = {}
    for layer, e in experts:
        value = mapping.get(f"{layer}.{e}", mapping.get("default"))
        if value is None:
            raise ValueError(f"{where}: no width for expert '{layer}.{e}' and no 'default'")
        widths[(layer, e)] = value
    return widths


def _encode(
    w, bits, group_size, sym, scale_dtype, method
) -> tuple[ProjectionLayout, dict[str, torch.Tensor]]:
    """w [n, k] -> its manifest entry (parts not yet placed) and the tensors of each part."""
    if bits == PLAIN_BITS:
        return ProjectionLayout("bf16", list(w.shape), {}), {"weight": w.to(torch.bfloat16).contiguous()}
    sym = bits >= POLICY_SYMMETRIC_FROM if sym is None else sym
    qw = quantize(w, bits=bits, group_size=group_size, sym=sym, scale_dtype=scale_dtype, method=method)
    tensors = {"packed": qw.packed, "scales": qw.scales}
    if qw.zeros is not None:
        tensors["zeros"] = qw.zeros
    entry = ProjectionLayout(
        "quant", [qw.n, qw.k], {}, qw.bits, qw.group_size, qw.sym, DTYPE_NAMES[scale_dtype]
    )
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
