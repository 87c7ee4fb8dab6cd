"""The expert store's manifest: the one definition of ``manifest.json`` (docs/formats.md
describes it for readers in other languages), its version rules, and the checks a reader runs
before trusting an offset.

An extent is one expert: its gate, up and down projections (and GPT-OSS biases) back to back in
one blob file, starting and ending on a 4 KiB boundary, so one O_DIRECT read fetches it. Part
offsets are relative to the extent's start, so the bytes can land in any aligned buffer.
"""

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

FORMAT_NAME = "moeweave-expert-store"
VERSION = (1, 0)  # (major, minor): a reader refuses a newer major and accepts any minor
ALIGNMENT = 4096  # extent offsets and lengths; O_DIRECT's block
PART_ALIGNMENT = 64  # parts inside an extent: a cache line, so scales load aligned
MANIFEST = "manifest.json"
DENSE_FILE = "dense.safetensors"
PROJECTIONS = ("gate", "up", "down")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class StoreError(Exception):
    """A store that cannot be trusted: its message names the file and, where one is involved,
    the layer and expert."""


@dataclass
class Part:
    """Bytes [offset, offset + length) of an extent (offset relative to the extent start)."""

    offset: int
    length: int


@dataclass
class Projection:
    """One projection, [n, k] (y = x W^T). format "quant": the packed layout of
    moeweave.quant.QuantizedWeight with parts packed, scales and, when not sym, zeros.
    format "bf16": a plain bfloat16 [n, k] matrix in part "weight"."""

    format: str
    shape: list[int]
    parts: dict[str, Part]
    bits: int = 16
    group_size: int = 0
    sym: bool = True
    scale_dtype: str = "bfloat16"


@dataclass
class Bias:
    """A dense bias vector stored beside a projection (GPT-OSS has them), in its checkpoint dtype."""

    dtype: str
    shape: list[int]
    part: Part


@dataclass
class Extent:
    layer: int
    expert: int
    file: int  # index into Manifest.files
    offset: int
    length: int  # multiple of ALIGNMENT, zero padding included
    crc32c: int  # of all `length` bytes
    projections: dict[str, Projection]
    biases: dict[str, Bias] = field(default_factory=dict)


@dataclass
class Manifest:
    architecture: str
    config: dict
    files: list[str]
    extents: list[Extent]
    dense_file: str = DENSE_FILE
    version: tuple[int, int] = VERSION

    def to_json(self) -> str:
        body = {
            "format": FORMAT_NAME,
            "version": {"major": self.version[0], "minor": self.version[1]},
            "alignment": ALIGNMENT,
            "architecture": self.architecture,
            "config": self.config,
            "files": self.files,
            "dense_file": self.dense_file,
        }
        # One line per expert: a model has thousands, and a diff of two stores stays readable.
        head = json.dumps(body, indent=1, sort_keys=True)
        experts = ",\n".join("  " + json.dumps(asdict(extent), sort_keys=True) for extent in self.extents)
        return head[: -len("\n}")] + ',\n "experts": [\n' + experts + "\n ]\n}\n"


def load_manifest(directory: Path) -> Manifest:
    """Parses and checks directory/manifest.json: format, version, files present, extents aligned
    and parts inside their extents. Raises StoreError naming the file (and expert)."""
    path = directory / MANIFEST
    if not path.is_file():
        raise StoreError(f"{path}: missing; {directory} is not an expert store (write one with write_store)")
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StoreError(f"{path}: not valid JSON ({error})") from None
    if body.get("format") != FORMAT_NAME:
        raise StoreError(f"{path}: format is {body.get('format')!r}, expected {FORMAT_NAME!r}")
    version = body.get("version", {})
    major, minor = version.get("major"), version.get("minor")
    if not isinstance(major, int) or not isinstance(minor, int):
        raise StoreError(f"{path}: version must be {{'major': int, 'minor': int}}, got {version!r}")
    if major > VERSION[0]:
        raise StoreError(
            f"{path}: store version {major}.{minor} is newer than this reader's {VERSION[0]}.{VERSION[1]}; "
            "upgrade moeweave to read it"
        )
    if body.get("alignment") != ALIGNMENT:
        raise StoreError(f"{path}: alignment is {body.get('alignment')}, expected {ALIGNMENT}")
    try:
        manifest = Manifest(
            architecture=body["architecture"],
            config=body["config"],
            files=list(body["files"]),
            extents=[_extent(e) for e in body["experts"]],
            dense_file=body["dense_file"],
            version=(major, minor),
        )
    except (KeyError, TypeError) as error:
        raise StoreError(f"{path}: malformed entry ({type(error).__name__}: {error})") from None
    for index, name in enumerate(manifest.files):
        if not (directory / name).is_file():
            held = [f"layer {e.layer} expert {e.expert}" for e in manifest.extents if e.file == index]
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            raise StoreError(
                f"{directory / name}: missing (listed in {path}); it holds {len(held)} experts ({shown})"
            )
    if not (directory / manifest.dense_file).is_file():
        raise StoreError(
            f"{directory / manifest.dense_file}: missing (listed in {path}); it holds the dense weights"
        )
    for extent in manifest.extents:
        _check_extent(directory, manifest, extent)
    return manifest


def _known(cls, entry: dict) -> dict:
    """The fields of `entry` that `cls` has: a newer minor version may add others, to be ignored."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in entry.items() if k in names}


def _extent(e: dict) -> Extent:
    projections = {
        name: Projection(
            **{**_known(Projection, p), "parts": {k: Part(**_known(Part, v)) for k, v in p["parts"].items()}}
        )
        for name, p in e["projections"].items()
    }
    biases = {
        name: Bias(b["dtype"], b["shape"], Part(**b["part"])) for name, b in e.get("biases", {}).items()
    }
    return Extent(
        e["layer"], e["expert"], e["file"], e["offset"], e["length"], e["crc32c"], projections, biases
    )


def _check_extent(directory: Path, manifest: Manifest, extent: Extent) -> None:
    where = f"layer {extent.layer} expert {extent.expert}"
    if not 0 <= extent.file < len(manifest.files):
        raise StoreError(
            f"{directory / MANIFEST}: {where} names file index {extent.file}, which does not exist"
        )
    blob = directory / manifest.files[extent.file]
    if extent.offset % ALIGNMENT or extent.length % ALIGNMENT or extent.length <= 0:
        raise StoreError(
            f"{blob}: {where} has extent offset {extent.offset}, length {extent.length}; both must be "
            f"positive multiples of {ALIGNMENT} for O_DIRECT reads"
        )
    if set(extent.projections) != set(PROJECTIONS):
        raise StoreError(
            f"{blob}: {where} has projections {sorted(extent.projections)}, expected {PROJECTIONS}"
        )
    parts = [p for projection in extent.projections.values() for p in projection.parts.values()]
    parts += [b.part for b in extent.biases.values()]
    for part in parts:
        if part.offset < 0 or part.offset % PART_ALIGNMENT or part.offset + part.length > extent.length:
            raise StoreError(
                f"{blob}: {where} has a part at [{part.offset}, {part.offset + part.length}) outside its "
                f"{extent.length}-byte extent or not {PART_ALIGNMENT}-byte aligned"
            )
