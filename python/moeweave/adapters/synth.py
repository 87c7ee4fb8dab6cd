"""Synthetic ESFT adapters for tests and benchmarks: perturbed copies of a base's selected
experts, chosen by a released ESFT expert config or at random with ESFT's sparsity. A perturbed
expert answers differently from the base's, so a token sent to the wrong copy changes the output.

    moeweave adapters synth OUT [--base BASE] [--config expert_cfg.json | --fraction 0.07] [--seed S]
"""

from pathlib import Path

import torch

from moeweave.adapters.esft import EsftAdapter, check_selection, read_selection, save_esft
from moeweave.formats.hf_checkpoint import checkpoint_directory, read_config
from moeweave.models.spec import ModelSpec, spec_from_config
from moeweave.store.checkpoint import ExpertCheckpoint

# Each weight moves by this fraction of its expert projection's standard deviation, per entry.
PERTURBATION = 1.0


def random_selection(spec: ModelSpec, fraction: float, seed: int) -> dict[int, list[int]]:
    """Per MoE layer, round(fraction x E) experts (at least one) drawn at random."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    count = max(1, round(fraction * spec.num_experts))
    return {
        layer: sorted(torch.randperm(spec.num_experts, generator=generator)[:count].tolist())
        for layer, is_moe in enumerate(spec.moe_layers)
        if is_moe
    }


def synth_adapter(
    base: str | Path, selection: dict[int, list[int]], seed: int = 0, name: str = "synthetic"
) -> EsftAdapter:
    """The adapter replacing each selected expert of checkpoint `base` by a perturbed copy."""
    directory = checkpoint_directory(base)
    check_selection(selection, spec_from_config(read_config(directory)), "selection")
    generator = torch.Generator().manual_seed(seed)
    experts = {}
    with ExpertCheckpoint(directory) as checkpoint:
        for layer in sorted(selection):
            for expert in sorted(selection[layer]):
                weights, _ = checkpoint.expert(layer, expert)
                experts[(layer, expert)] = tuple(
                    _perturbed(weights[p], generator) for p in ("gate", "up", "down")
                )
    return EsftAdapter(name, experts)


def _perturbed(w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(w.shape, generator=generator) * w.float().std() * PERTURBATION
    return (w.float() + noise).to(w.dtype)


def synth_command(out: Path, base: Path, config: Path | None, fraction: float, seed: int) -> None:
    spec = spec_from_config(read_config(checkpoint_directory(base)))
    selection = read_selection(config) if config is not None else random_selection(spec, fraction, seed)
    adapter = synth_adapter(base, selection, seed, name=out.name)
    save_esft(adapter, out)
    tuned = sum(len(experts) for experts in selection.values())
    total = spec.num_experts * sum(spec.moe_layers)
    print(
        f"# {out}: {tuned} of {total} routed experts ({tuned / total:.1%}) in {len(selection)} layers, "
        f"{adapter.nbytes / 2**20:.1f} MiB"
    )
