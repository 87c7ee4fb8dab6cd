"""The expert store's manifest: the one definition of ``manifest.json`` (docs/formats.md
describes it for readers in other languages), its version rules, its checksum, and the checks a
reader runs before trusting an offset.

An extent is one expert: its gate, up and down projections (and GPT-OSS biases) back to back in
one blob file, starting and ending on a 4 KiB boundary, so one O_DIRECT read fetches it. Part
offsets are relative to the extent's start, so the bytes can land in any aligned buffer.

The per-extent CRC covers blob bytes, not the manifest: an edited scale dtype, a swapped shape or
a second entry for one expert would read "fine" and compute garbage. So the manifest carries a
SHA-256 of itself, and every field is checked (type, range, against the model config and the
lengths its shape, bits and group size imply, overlaps, paths inside the store) before use.
"""

import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from moeweave.formats.expert_naming import ARCHITECTURES as EXPERT_NAMING
from moeweave.formats.paths import confined
from moeweave.quant.format import SUPPORTED_BITS, TILE_ROWS, UNIT_COLS, padded, unit_bytes

FORMAT_NAME = "moeweave-expert-store"
VERSION = (1, 1)  # (major, minor): a reader refuses a newer major and accepts any minor
CHECKSUM_VERSION = (1, 1)  # the first version whose manifests carry a checksum
ALIGNMENT = 4096  # extent offsets and lengths; O_DIRECT's block
PART_ALIGNMENT = 64  # parts inside an extent: a cache line, so scales load aligned
MANIFEST = "manifest.json"
DENSE_FILE = "dense.safetensors"
PROJECTIONS = ("gate", "up", "down")
FORMATS = ("quant", "bf16")
PLAIN_BITS = 16  # the bits of an unquantised ("bf16") projection
# The checksum's value while it is computed: the SHA-256 covers the file with this in its place.
UNSIGNED = "sha256:" + "0" * 64
_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

# model_type -> the config key of its experts' intermediate size I (the names differ by family).
_INTERMEDIATE_KEYS = {name: naming.intermediate_key for name, naming in EXPERT_NAMING.items()}
# The routed expert count is under one of these, by family and transformers version.
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


class StoreError(Exception):
    """A store that cannot be trusted: its message names the file and, where one is involved,
    the layer and expert."""


@dataclass
class Part:
    """Bytes [offset, offset + length) of an extent (offset relative to the extent start)."""

    offset: int
    length: int


@dataclass
class ProjectionLayout:
    """One projection, [n, k] (y = x W^T). format "quant": the packed layout of
    moeweave.quant.QuantizedWeight with parts packed, scales and, when not sym, zeros.
    format "bf16": a plain bfloat16 [n, k] matrix in part "weight"."""

    format: str
    shape: list[int]
    parts: dict[str, Part]
    bits: int = PLAIN_BITS
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
    projections: dict[str, ProjectionLayout]
    biases: dict[str, Bias] = field(default_factory=dict)


@dataclass
class Manifest:
    architecture: str
    config: dict
    files: list[str]
    extents: list[Extent]
    dense_file: str = DENSE_FILE
    version: tuple[int, int] = VERSION

    def layer_bytes(self) -> dict[int, int]:
        """layer -> bytes of its experts' extents."""
        sizes: dict[int, int] = {}
        for extent in self.extents:
            sizes[extent.layer] = sizes.get(extent.layer, 0) + extent.length
        return sizes

    def to_json(self) -> str:
        """The manifest as written: sorted keys, one expert per line, checksum filled in."""
        body = {
            "format": FORMAT_NAME,
            "version": {"major": self.version[0], "minor": self.version[1]},
            "alignment": ALIGNMENT,
            "architecture": self.architecture,
            "config": self.config,
            "files": self.files,
            "dense_file": self.dense_file,
            "checksum": UNSIGNED,
        }
        # One line per expert: a model has thousands, and a diff of two stores stays readable.
        head = json.dumps(body, indent=1, sort_keys=True)
        experts = ",\n".join("  " + json.dumps(asdict(extent), sort_keys=True) for extent in self.extents)
        return sign(head[: -len("\n}")] + ',\n "experts": [\n' + experts + "\n ]\n}\n")


def sign(text: str) -> str:
    """`text`, a manifest whose checksum is UNSIGNED, with the checksum filled in: the SHA-256 of
    its UTF-8 bytes as they are (no canonical form to agree on; any reader can recompute it)."""
    if text.count(f'"{UNSIGNED}"') != 1:
        raise ValueError(f"sign: the manifest must hold the checksum placeholder {UNSIGNED!r} exactly once")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return text.replace(f'"{UNSIGNED}"', f'"sha256:{digest}"')


@dataclass(frozen=True)
class ExpertDims:
    """The expert sizes a model config implies: H hidden, I expert intermediate size."""

    hidden: int
    intermediate: int
    layers: int
    experts: int
    intermediate_key: str  # the config key I came from, for messages

    def shape(self, projection: str) -> tuple[int, int]:
        """[n, k] of a projection: gate and up [I, H], down [H, I]."""
        return (self.hidden, self.intermediate) if projection == "down" else (self.intermediate, self.hidden)


def expert_dims(architecture: str, config: dict) -> ExpertDims:
    """The expert sizes of `config`; ValueError for an architecture the store does not know or a
    size missing. (Not moeweave.models.spec: that refuses configs the store need not understand,
    RoPE scaling for one, and does not parse GPT-OSS.)"""
    if architecture not in _INTERMEDIATE_KEYS:
        raise ValueError(
            f"model_type {architecture!r} is not an architecture the store knows ({', '.join(sorted(_INTERMEDIATE_KEYS))})"
        )
    count_key = next(
        (key for key in _EXPERT_COUNT_KEYS if config.get(key) is not None), _EXPERT_COUNT_KEYS[0]
    )
    keys = ("hidden_size", _INTERMEDIATE_KEYS[architecture], "num_hidden_layers", count_key)
    for key in keys:
        value = config.get(key)
        if type(value) is not int or value <= 0:
            raise ValueError(f"config {key} is {value!r}, expected a positive integer")
    return ExpertDims(*(config[key] for key in keys), intermediate_key=_INTERMEDIATE_KEYS[architecture])


def load_manifest(directory: Path) -> Manifest:
    """Parses and checks directory/manifest.json: checksum, format, version, every field, files
    inside the directory and present, extents aligned and disjoint, parts inside their extents.
    Raises StoreError naming the file (and the layer, expert and field)."""
    path = directory / MANIFEST
    if not path.is_file():
        raise StoreError(f"{path}: missing; {directory} is not an expert store (write one with write_store)")
    try:
        raw = confined(directory, MANIFEST, str(directory)).read_bytes()
    except ValueError as error:
        raise StoreError(str(error)) from None
    try:
        body = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError, _Bad) as error:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        raise StoreError(f"{path}: not valid JSON ({error})") from None
    if type(body) is not dict:
        raise StoreError(f"{path}: must hold a JSON object, got {type(body).__name__}")
    if body.get("format") != FORMAT_NAME:
        raise StoreError(f"{path}: format is {body.get('format')!r}, expected {FORMAT_NAME!r}")
    version = _version(path, body.get("version"))
    _verify_checksum(path, raw, body.get("checksum"), version)
    try:
        manifest = _manifest(body, version)
    except _Bad as error:
        raise StoreError(f"{path}: {error}") from None
    _check_files(directory, path, manifest)
    return manifest


class _Bad(Exception):
    """A field that fails a check; load_manifest prefixes the file."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    # json.loads keeps the last of two equal keys; another parser may keep the first.
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Bad(f"key {next(k for k in keys if keys.count(k) > 1)!r} appears twice in one object")
    return dict(pairs)


def _no_constant(name: str):
    raise _Bad(f"{name} is not JSON")


def _version(path: Path, version) -> tuple[int, int]:
    parts = (version.get("major"), version.get("minor")) if type(version) is dict else (None, None)
    if any(type(p) is not int for p in parts) or parts[0] < 1 or parts[1] < 0:
        raise StoreError(f"{path}: version must be {{'major': int >= 1, 'minor': int >= 0}}, got {version!r}")
    if parts[0] > VERSION[0]:
        raise StoreError(
            f"{path}: store version {parts[0]}.{parts[1]} is newer than this reader's {VERSION[0]}.{VERSION[1]}; "
            "upgrade moeweave to read it"
        )
    return parts


def _verify_checksum(path: Path, raw: bytes, checksum, version: tuple[int, int]) -> None:
    if checksum is None:
        if version >= CHECKSUM_VERSION:
            raise StoreError(
                f"{path}: checksum is missing; manifests of version {version[0]}.{version[1]} carry one"
            )
        return  # written before manifests had a checksum: the field checks below still apply
    if type(checksum) is not str or not _CHECKSUM.fullmatch(checksum):
        raise StoreError(f"{path}: checksum is {checksum!r}, expected 'sha256:' and 64 lowercase hex digits")
    quoted = f'"{checksum}"'.encode()
    if raw.count(quoted) != 1:
        raise StoreError(
            f"{path}: checksum mismatch: its value must appear exactly once, verbatim, in the file"
        )
    digest = "sha256:" + hashlib.sha256(raw.replace(quoted, f'"{UNSIGNED}"'.encode())).hexdigest()
    if digest != checksum:
        raise StoreError(
            f"{path}: checksum mismatch (the file's SHA-256 is {digest}, its checksum field says {checksum}); "
            "the manifest was edited or is corrupt"
        )


_KINDS = {int: "an integer", bool: "true or false", str: "a string", dict: "an object", list: "a list"}


def _get(entry: dict, key: str, where: str, kind: type):
    """entry[key], of exactly `kind` (json.loads makes exactly these types, so True is no int)."""
    if key not in entry:
        raise _Bad(f"{where}{key} is missing")
    value = entry[key]
    if type(value) is not kind:
        raise _Bad(f"{where}{key} is {value!r}, expected {_KINDS[kind]}")
    return value


def _count(entry: dict, key: str, where: str, minimum: int = 0, multiple: int = 1) -> int:
    value = _get(entry, key, where, int)
    if value < minimum or value % multiple:
        multiple_text = f", a multiple of {multiple}" if multiple > 1 else ""
        raise _Bad(f"{where}{key} is {value}, expected an integer >= {minimum}{multiple_text}")
    return value


def _choice(entry: dict, key: str, where: str, kind: type, allowed: tuple):
    value = _get(entry, key, where, kind)
    if value not in allowed:
        raise _Bad(f"{where}{key} is {value!r}, expected one of {', '.join(map(str, allowed))}")
    return value


def _manifest(body: dict, version: tuple[int, int]) -> Manifest:
    _choice(body, "alignment", "", int, (ALIGNMENT,))
    architecture = _choice(body, "architecture", "", str, tuple(_INTERMEDIATE_KEYS))
    config = _get(body, "config", "", dict)
    if config.get("model_type") != architecture:
        raise _Bad(f"config model_type is {config.get('model_type')!r}, but architecture is {architecture!r}")
    try:
        dims = expert_dims(architecture, config)
    except ValueError as error:
        raise _Bad(str(error)) from None
    files = _get(body, "files", "", list)
    for index, name in enumerate(files):
        if type(name) is not str:
            raise _Bad(f"files[{index}] is {name!r}, expected a string")
    dense_file = _get(body, "dense_file", "", str)
    entries = _get(body, "experts", "", list)
    if not entries:
        raise _Bad("experts is empty")
    extents = [_extent(entry, index, dims, len(files)) for index, entry in enumerate(entries)]
    _check_disjoint(extents)
    return Manifest(architecture, config, files, extents, dense_file, version)


def _extent(entry, index: int, dims: ExpertDims, file_count: int) -> Extent:
    if type(entry) is not dict:
        raise _Bad(f"experts[{index}] is {entry!r}, expected an object")
    layer = _count(entry, "layer", f"experts[{index}]: ")
    expert = _count(entry, "expert", f"experts[{index}]: ")
    where = f"layer {layer} expert {expert}: "
    if layer >= dims.layers:
        raise _Bad(f"{where}layer is {layer}, but the config has num_hidden_layers {dims.layers}")
    if expert >= dims.experts:
        raise _Bad(f"{where}expert is {expert}, but the config has {dims.experts} experts")
    file = _count(entry, "file", where)
    if file >= file_count:
        raise _Bad(f"{where}file is {file}, but files has {file_count} entries")
    offset = _count(entry, "offset", where, multiple=ALIGNMENT)
    length = _count(entry, "length", where, minimum=ALIGNMENT, multiple=ALIGNMENT)
    crc32c = _count(entry, "crc32c", where)
    if crc32c >= 1 << 32:
        raise _Bad(f"{where}crc32c is {crc32c}, more than 32 bits")
    table = _get(entry, "projections", where, dict)
    if set(table) != set(PROJECTIONS):
        raise _Bad(f"{where}projections are {sorted(table)}, expected {list(PROJECTIONS)}")
    projections = {
        name: _projection(table[name], f"{where}projections.{name}.", dims.shape(name))
        for name in PROJECTIONS
    }
    table = _get(entry, "biases", where, dict) if "biases" in entry else {}
    if not set(table) <= set(PROJECTIONS):
        raise _Bad(f"{where}biases are {sorted(table)}, expected some of {list(PROJECTIONS)}")
    biases = {
        name: _bias(table[name], f"{where}biases.{name}.", dims.shape(name)[0]) for name in sorted(table)
    }
    parts = [
        (f"projections.{p}.parts.{k}", part) for p in PROJECTIONS for k, part in projections[p].parts.items()
    ]
    parts += [(f"biases.{name}.part", bias.part) for name, bias in biases.items()]
    _check_parts(where, length, parts)
    return Extent(layer, expert, file, offset, length, crc32c, projections, biases)


def _projection(entry, where: str, shape: tuple[int, int]) -> ProjectionLayout:
    if type(entry) is not dict:
        raise _Bad(f"{where[:-1]} is {entry!r}, expected an object")
    form = _choice(entry, "format", where, str, FORMATS)
    got = _get(entry, "shape", where, list)
    if got != list(shape) or any(type(size) is not int for size in got):
        raise _Bad(
            f"{where}shape is {got!r}, expected {list(shape)} (gate and up [I, H], down [H, I] by the config)"
        )
    n, k = shape
    bits = _get(entry, "bits", where, int)
    group_size = _get(entry, "group_size", where, int)
    sym = _get(entry, "sym", where, bool)
    scale_dtype = _choice(entry, "scale_dtype", where, str, tuple(DTYPES))
    if form == "bf16":
        # The quantisation fields mean nothing here; one spelling keeps stores comparable.
        for key, value in {
            "bits": PLAIN_BITS,
            "group_size": 0,
            "sym": True,
            "scale_dtype": "bfloat16",
        }.items():
            _choice(entry, key, where, type(value), (value,))
        lengths = {"weight": n * k * 2}
    else:
        _choice(entry, "bits", where, int, SUPPORTED_BITS)
        _count(entry, "group_size", where, minimum=UNIT_COLS, multiple=UNIT_COLS)
        tiles, padded_k = padded(n, TILE_ROWS) // TILE_ROWS, padded(k, group_size)
        group_bytes = tiles * (padded_k // group_size) * TILE_ROWS * DTYPES[scale_dtype].itemsize
        lengths = {"packed": tiles * (padded_k // UNIT_COLS) * unit_bytes(bits), "scales": group_bytes}
        if not sym:
            lengths["zeros"] = group_bytes
    table = _get(entry, "parts", where, dict)
    if set(table) != set(lengths):
        raise _Bad(f"{where}parts are {sorted(table)}, expected {sorted(lengths)}")
    parts = {name: _part(table[name], f"{where}parts.{name}.", lengths[name]) for name in sorted(lengths)}
    return ProjectionLayout(form, list(shape), parts, bits, group_size, sym, scale_dtype)


def _bias(entry, where: str, size: int) -> Bias:
    if type(entry) is not dict:
        raise _Bad(f"{where[:-1]} is {entry!r}, expected an object")
    dtype = _choice(entry, "dtype", where, str, tuple(DTYPES))
    if _get(entry, "shape", where, list) != [size]:
        raise _Bad(f"{where}shape is {entry['shape']!r}, expected [{size}] by the config")
    return Bias(
        dtype, [size], _part(_get(entry, "part", where, dict), f"{where}part.", size * DTYPES[dtype].itemsize)
    )


def _part(entry, where: str, length: int) -> Part:
    if type(entry) is not dict:
        raise _Bad(f"{where[:-1]} is {entry!r}, expected an object")
    offset = _count(entry, "offset", where, multiple=PART_ALIGNMENT)
    got = _count(entry, "length", where)
    if got != length:
        raise _Bad(
            f"{where}length is {got}, expected {length} (what its shape, bits, group size and dtype take)"
        )
    return Part(offset, length)


def _check_parts(where: str, length: int, parts: list[tuple[str, Part]]) -> None:
    """Every part inside the extent, no two sharing a byte."""
    end, previous = 0, None
    for name, part in sorted(parts, key=lambda item: item[1].offset):
        if part.offset + part.length > length:
            raise _Bad(
                f"{where}{name} is bytes [{part.offset}, {part.offset + part.length}), outside the {length}-byte extent"
            )
        if part.offset < end:
            raise _Bad(f"{where}{name} at offset {part.offset} overlaps {previous}, which ends at {end}")
        end, previous = part.offset + part.length, name


def _check_disjoint(extents: list[Extent]) -> None:
    """Each (layer, expert) once; no two extents of one file sharing a byte."""
    seen: set[tuple[int, int]] = set()
    for extent in extents:
        if (extent.layer, extent.expert) in seen:
            raise _Bad(f"layer {extent.layer} expert {extent.expert}: listed twice")
        seen.add((extent.layer, extent.expert))
    ordered = sorted(extents, key=lambda e: (e.file, e.offset))
    for before, after in itertools.pairwise(ordered):
        if before.file == after.file and after.offset < before.offset + before.length:
            raise _Bad(
                f"layer {after.layer} expert {after.expert}: extent at offset {after.offset} of files[{after.file}] "
                f"overlaps layer {before.layer} expert {before.expert}'s, which ends at {before.offset + before.length}"
            )


def _check_files(directory: Path, path: Path, manifest: Manifest) -> None:
    """Every file named lies inside the store directory (resolved, symlinks included), exists,
    and is named once: two names for one blob would hide overlapping extents."""
    named = [(f"files[{index}]", name, _holds(manifest, index)) for index, name in enumerate(manifest.files)]
    named.append(("dense_file", manifest.dense_file, "it holds the dense weights"))
    seen: dict[Path, str] = {}
    for field_name, name, holds in named:
        try:
            file = confined(directory, name, f"{path}: {field_name}")
        except ValueError as error:
            raise StoreError(str(error)) from None
        if not file.is_file():
            raise StoreError(f"{directory / name}: missing (listed in {path}); {holds}")
        if file in seen:
            raise StoreError(f"{path}: {field_name} and {seen[file]} are the same file {file}")
        seen[file] = field_name


def _holds(manifest: Manifest, index: int) -> str:
    held = [f"layer {e.layer} expert {e.expert}" for e in manifest.extents if e.file == index]
    return f"it holds {len(held)} experts ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''})"
