"""`moeweave convert HF_DIR OUT --bits 2|3|4|8|bf16|auto`: the one way to make an expert store.
Uniform widths, a --bits-map, or EdgeMoE's `auto` search (moeweave.engine.bitwidths); then the
path statistics of the path predictor are profiled on calibration text through the engine (any
model size: the experts are read under a budget of two layers), and with --fallback-bits the
low-bit copy of the experts is written (moeweave.engine.fallback). Prints a report."""

from collections import Counter
from pathlib import Path

from moeweave.engine.bitwidths import bits_map, choose_bitwidths
from moeweave.engine.calibration import calibration_text, mean_loss, perplexity, token_chunks
from moeweave.engine.engine import Engine, dense_dtype
from moeweave.engine.fallback import write_fallback
from moeweave.engine.paths import FILE as PATHS_FILE
from moeweave.engine.paths import profile_paths
from moeweave.engine.sizes import format_size
from moeweave.formats.hf_checkpoint import checkpoint_directory, read_config
from moeweave.models.moe_block import MoEBlock
from moeweave.store.writer import PLAIN_BITS, read_bits_map, write_store

BITS_CHOICES = ("2", "3", "4", "8", "bf16", "auto")


def convert(
    hf_dir: Path,
    out: Path,
    bits: str = "4",
    tolerance: float = 0.02,
    calib: Path | None = None,
    low_bits: int = 2,
    high_bits: int = 4,
    bits_map_file: Path | None = None,
    group_size: int = 64,
    calib_tokens: int = 4096,
    fallback_bits: int | None = None,
) -> None:
    if bits not in BITS_CHOICES:
        raise ValueError(f"--bits must be one of {', '.join(BITS_CHOICES)}, got {bits!r}")
    if not 0 <= tolerance < 10:
        raise ValueError(f"--tolerance must be a fraction in [0, 10), got {tolerance}")
    dtype = dense_dtype(read_config(checkpoint_directory(hf_dir)))
    text = calibration_text(hf_dir, calib)
    chunks = None
    if text is not None:
        from tokenizers import Tokenizer

        tokenizer_file = Path(hf_dir) / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ValueError(f"{hf_dir} has no tokenizer.json, so calibration text cannot be encoded")
        chunks = token_chunks(Tokenizer.from_file(str(tokenizer_file)), text, calib_tokens)
    if bits == "auto":
        if chunks is None:
            raise ValueError("--bits auto needs calibration text: pass --calib FILE")
        choice = choose_bitwidths(Path(hf_dir), chunks, high_bits, low_bits, tolerance, dtype)
        widths = bits_map(choice)
        print(
            f"# auto bitwidths: {choice.low_count} of {len(choice.bits)} experts at {low_bits} bits, the rest at "
            f"{high_bits} (calibration perplexity {choice.perplexity_high:.3f} -> {choice.perplexity_chosen:.3f}, "
            f"tolerance {tolerance:.1%})"
        )
    elif bits_map_file is not None:
        widths = {"default": _width(bits), **read_bits_map(bits_map_file)}
    else:
        widths = _width(bits)
    manifest = write_store(hf_dir, out, bits=widths, group_size=group_size, sym=None)
    _report_widths(manifest)
    if fallback_bits is not None:
        copy = write_fallback(hf_dir, out, fallback_bits, group_size)
        print(
            f"# low-bit fallback: every expert also at {fallback_bits} bits, {format_size(sum(copy.layer_bytes().values()))}"
        )
    if chunks is None:
        print(
            "# no calibration text (--calib FILE): path statistics not profiled, so predictor 'path' is unavailable"
        )
        return
    with Engine.open(out, memory_budget=2 * max(manifest.layer_bytes().values()), predictor="none") as engine:
        model = engine.model
        layers = [i for i, layer in enumerate(model.layers) if isinstance(layer.mlp, MoEBlock)]
        profile_paths(model, chunks, layers, model.spec.top_k).save(out)
        loss = mean_loss(model, chunks)
    tokens = sum(c.shape[1] for c in chunks)
    print(f"# calibration perplexity of the store: {perplexity(loss):.3f} over {tokens} tokens")
    print(f"# path statistics of {tokens} calibration tokens: {Path(out) / PATHS_FILE}")


def _width(bits: str) -> int:
    return PLAIN_BITS if bits == "bf16" else int(bits)


def _report_widths(manifest) -> None:
    widths = sorted({p.bits for e in manifest.extents for p in e.projections.values()})
    rows = Counter((e.layer, e.projections["gate"].bits) for e in manifest.extents)
    print("# layer " + " ".join(f"{'bf16' if w == PLAIN_BITS else f'int{w}':>5}" for w in widths))
    for layer in sorted({e.layer for e in manifest.extents}):
        print(f"# {layer:5d} " + " ".join(f"{rows[(layer, w)]:5d}" for w in widths))
    total = sum(e.length for e in manifest.extents)
    print(f"# {len(manifest.extents)} experts, {format_size(total)} in {len(manifest.files)} blob files")
