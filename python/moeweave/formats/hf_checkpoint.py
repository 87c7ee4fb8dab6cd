"""Reading a Hugging Face checkpoint directory: its config and weights. Safetensors only:
pickle weights (.bin, .pt, ...) are refused, because unpickling runs arbitrary code. With a shard
index, exactly the shards it names are used (Mistral repos also ship a consolidated.safetensors
in their own naming beside them). Every file read lies inside the directory (formats/paths.py):
a shard index naming `../x` or `/x`, or a symlink out of the directory, is refused."""

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from moeweave.formats.paths import confined
from moeweave.quant.finite import require_finite

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SHARD_INDEX = "model.safetensors.index.json"


def checkpoint_directory(path: str | Path) -> Path:
    """path, which must be an existing directory (FileNotFoundError saying which it is not)."""
    path = Path(path)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise FileNotFoundError(f"checkpoint directory {path} {what}")
    return path


def safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's safetensors files, resolved; ValueError when it has none (naming any
    pickles) or when one lies outside the directory."""
    index = directory / SHARD_INDEX
    if index.exists() or index.is_symlink():
        weight_map = read_json(directory, SHARD_INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: 'weight_map' must be an object {{tensor name: file name}}")
        files = {confined(directory, name, f"{index}: weight_map") for name in weight_map.values()}
    else:
        files = {confined(directory, path.name, str(directory)) for path in directory.glob("*.safetensors")}
    if files:
        return sorted(files)
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{directory}: holds only pickle weights ({', '.join(pickles)}); moeweave never unpickles "
            "(it can run arbitrary code). Convert the checkpoint to safetensors first."
        )
    raise ValueError(f"{directory}: no *.safetensors files")


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file, as stored: every tensor's name, dtype, shape and
    byte offsets."""
    with open(path, "rb") as f:
        return f.read(int.from_bytes(f.read(8), "little"))


def read_config(directory: Path) -> dict:
    if not (directory / "config.json").is_file():
        raise ValueError(f"{directory / 'config.json'}: missing; a Hugging Face checkpoint needs its config")
    return read_json(directory, "config.json")


def read_json(directory: Path, name: str) -> dict:
    """The JSON object in directory/name, which must lie inside the directory."""
    path = confined(directory, name, str(directory))
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{directory / name}: not a UTF-8 JSON file ({error})") from None
    if not isinstance(body, dict):
        raise ValueError(f"{directory / name}: must hold a JSON object, got {type(body).__name__}")
    return body


def open_safetensors(path: Path):
    """safe_open(path) for torch tensors; a file that is not valid safetensors (truncated, not
    safetensors at all) raises ValueError naming it."""
    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as error:
        raise ValueError(f"{path}: not a valid safetensors file ({error})") from None


# safetensors' dtype names -> torch dtypes.
SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class _Entry:
    """Where one tensor lies: its file (path and an open descriptor) and its bytes there."""

    path: Path
    fd: int
    offset: int  # of the first byte in the file
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class Checkpoint:
    """The one reader of a checkpoint directory: its config and its safetensors tensors by name,
    each read on demand. Tensors are read with pread into memory of their own, not through a
    mapping of the file: a mapped file's pages stay resident while it is open, so loading a
    model would hold the whole checkpoint on top of what it converts it into. A tensor name in
    two files (which one is meant?) and a NaN or infinity in a tensor read (it would spread
    through every output or be quantised into garbage without a word) are refused. Records the
    tensors taken, so a loader can report the ones it never used. Use as a context manager, or
    close()."""

    def __init__(self, directory: str | Path):
        self.directory = checkpoint_directory(directory)
        self.config = read_config(self.directory)
        self.architecture = self.config.get("model_type", "unknown")
        self._stack = contextlib.ExitStack()
        self._entries: dict[str, _Entry] = {}
        for path in safetensors_files(self.directory):
            with open_safetensors(path):  # validates the header: offsets, dtypes, sizes
                pass
            fd = os.open(path, os.O_RDONLY)
            self._stack.callback(os.close, fd)
            for name, entry in _entries(path, fd).items():
                if name in self._entries:
                    raise ValueError(
                        f"{self.directory}: tensor {name!r} is in both {self._entries[name].path} and {path}"
                    )
                self._entries[name] = entry
        self.taken: set[str] = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """Every tensor name, in file order."""
        return list(self._entries)

    def file_of(self, name: str) -> Path:
        return self._entries[name].path

    def shape(self, name: str) -> list[int]:
        return list(self._entries[name].shape)

    def nbytes(self, name: str) -> int:
        return self._entries[name].nbytes

    def will_need(self, name: str) -> None:
        """Asks the kernel to start reading tensor `name` into the page cache (it returns at once),
        so that a later tensor() finds it there."""
        entry = self._entries[name]
        os.posix_fadvise(entry.fd, entry.offset, entry.nbytes, os.POSIX_FADV_WILLNEED)

    def tensor(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor `name`, checked for NaN/inf. With a uint8 `buffer` of at least its bytes,
        read into the buffer's front (the result is a view of it): a loader that converts one
        tensor after another reuses the same pages instead of faulting in fresh ones each time."""
        entry = self._entries[name]
        out = torch.empty(entry.nbytes, dtype=torch.uint8) if buffer is None else buffer[: entry.nbytes]
        if out.numel() < entry.nbytes:
            raise ValueError(f"tensor {name!r}: {entry.nbytes} bytes do not fit a buffer of {buffer.numel()}")
        _pread(entry.fd, entry.offset, out)
        tensor = out.view(entry.dtype).reshape(entry.shape)
        require_finite(tensor, name)
        return tensor

    def tensor_slice(self, name: str, index: int) -> torch.Tensor:
        """tensor(name)[index], reading only that slice."""
        entry = self._entries[name]
        if not 0 <= index < entry.shape[0]:
            raise IndexError(
                f"tensor {name!r}: index {index} is outside its first dimension of {entry.shape[0]}"
            )
        row = entry.nbytes // entry.shape[0]
        out = torch.empty(row, dtype=torch.uint8)
        _pread(entry.fd, entry.offset + index * row, out)
        tensor = out.view(entry.dtype).reshape(entry.shape[1:])
        require_finite(tensor, name, at=(index,))
        return tensor

    def take(self, name: str, shape: tuple[int, ...], buffer: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor `name`, checked against the expected shape and for NaN/inf, and marked taken
        (read into `buffer` as tensor() does, when given)."""
        self.skip(name, shape)
        return self.tensor(name, buffer)

    def skip(self, name: str, shape: tuple[int, ...]) -> None:
        """Check that `name` is there with the expected shape and mark it taken, without reading
        it (take() reads it too; a tensor another process loads under expert parallelism is
        only checked)."""
        if name not in self._entries:
            raise ValueError(f"checkpoint {self.directory} is missing tensor {name!r}")
        if tuple(self.shape(name)) != tuple(shape):
            raise ValueError(
                f"tensor {name!r} in {self.directory} has shape {self.shape(name)}, expected {list(shape)}"
            )
        self.taken.add(name)

    def untaken(self) -> list[str]:
        return sorted(set(self._entries) - self.taken)


def _entries(path: Path, fd: int) -> dict[str, _Entry]:
    """Every tensor of a (validated) safetensors file, by name."""
    header = safetensors_header(path)
    data_start = 8 + len(header)
    entries = {}
    for name, info in json.loads(header).items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(
                f"{path}: tensor {name!r} has dtype {info['dtype']}, which moeweave does not read"
            )
        start, end = info["data_offsets"]
        entries[name] = _Entry(
            path, fd, data_start + start, end - start, SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"])
        )
    return entries


def _pread(fd: int, offset: int, out: torch.Tensor) -> None:
    """Fills the uint8 tensor out [nbytes] with the file's bytes from offset. One pread moves at
    most about 2 GiB on Linux, so larger tensors take several."""
    nbytes = out.numel()
    view = memoryview(out.numpy())
    done = 0
    while done < nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise ValueError(
                f"unexpected end of file at byte {offset + done} (a truncated safetensors file?)"
            )
        done += got
