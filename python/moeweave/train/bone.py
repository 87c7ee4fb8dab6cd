"""Bone / MiSS adapters (Kang 2024, arXiv 2409.15371; ../shared/SPEC.md §4) in PEFT's current
naming (`MissConfig`): a trainable block B per adapted weight W [out, in], zero at first so the
adapted model starts as the base.

    mode       B                 the adapted weight
    "bat"      [out/r, r, r]     W'_ij = W_ij (I + B_i) + B_i for every r x r block (row i, column j)
    "default"  [r, out]          W'[o, c] = W[o, c] + B[c mod r, o]
    "mini"     [r, mini_r]       W'[o, c] = W[o, c] + B[c mod r, o mod mini_r]

    bone.apply(model, r=64, mode="bat", target_modules=["q_proj", "v_proj", "experts.gate_up_proj"])
    ...train: only the blocks require grad...
    bone.save_adapter(model, "adapter-dir")     # PEFT's MiSS format: peft.PeftModel loads it
    bone.merge(model); bone.unmerge(model)      # W <- W' and back

nn.Linear targets become `BoneLinear` modules (the base layer as `base_layer`, B as `miss_block`,
PEFT's names, so the state dict and the adapter file use PEFT's keys). bat runs through
moeweave::bone_bat_linear, which never holds W' whole; default and mini run through
moeweave::bone_shard_linear, which adds the shard sum of x times B to the base output (the in % r
remainder zero-padded). transformers 5's fused expert tensors (`experts.gate_up_proj [E, 2I, H]`,
`experts.down_proj [E, H, I]`), which PEFT cannot adapt, get one block per expert, batched: a
parametrization gives the experts forward W' for all experts at once (bat:
moeweave::bone_bat_weight). Unmerging bat inverts I + B_i in fp32: W_ij = (W'_ij - B_i)(I + B_i)^-1.

Dimension legend: E experts, r block size.
"""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from moeweave.ops import reference
from moeweave.ops.bone import bone_bat_linear, bone_bat_weight
from moeweave.ops.bone_shards import bone_shard_linear

MODES = ("bat", "default", "mini")
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_PEFT_INIT = {"bat": "bat", "default": True, "mini": "mini"}  # MissConfig.init_weights per mode


def _block_shape(
    mode: str, r: int, mini_r: int, out_features: int, in_features: int, name: str
) -> tuple[int, ...]:
    """B's shape for a weight [out, in], after checking the mode's divisibility rules."""
    if mode not in MODES:
        raise ValueError(f"bone: mode must be one of {MODES}, got {mode!r}")
    if r < 1 or r > in_features:
        raise ValueError(f"bone: r = {r} must be in [1, in_features = {in_features}] for {name}")
    if mode == "bat":
        if in_features % r or out_features % r:
            raise ValueError(
                f"bone: bat needs in and out features divisible by r = {r}; {name} is [{out_features}, {in_features}]"
            )
        return (out_features // r, r, r)
    if mode == "mini":
        if mini_r < 1 or out_features % mini_r:
            raise ValueError(
                f"bone: mini needs out_features % mini_r == 0; {name} has {out_features}, mini_r = {mini_r}"
            )
        return (r, mini_r)
    return (r, out_features)


class BoneLinear(torch.nn.Module):
    """An nn.Linear under a Bone adapter: `base_layer` (frozen) and `miss_block` (B, trainable)."""

    def __init__(self, base_layer: torch.nn.Linear, mode: str, r: int, mini_r: int, name: str):
        super().__init__()
        shape = _block_shape(mode, r, mini_r, base_layer.out_features, base_layer.in_features, name)
        self.base_layer = base_layer.requires_grad_(False)
        self.miss_block = torch.nn.Parameter(
            torch.zeros(shape, dtype=base_layer.weight.dtype, device=base_layer.weight.device)
        )
        self.mode, self.merged = mode, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.merged:
            return base(x)
        if self.mode == "bat":
            return bone_bat_linear(x, base.weight, self.miss_block, base.bias)
        return bone_shard_linear(x, base.weight, self.miss_block, base.bias)


def _delta(block: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """default / mini: ΔW [..., out, in] with ΔW[o, c] = B[c mod r, o mod width] from B
    [..., r, width] (leading dims: experts)."""
    r, width = block.shape[-2:]
    lead = (1,) * (block.dim() - 2)
    tiled = block.repeat(*lead, 1, out_features // width)  # [..., r, out]
    return tiled.transpose(-1, -2).repeat(*lead, 1, -(-in_features // r))[..., :in_features]


def _merged(weight: torch.Tensor, block: torch.Tensor, mode: str) -> torch.Tensor:
    """W' of a weight [out, in] (in fp32, cast back to the weight's dtype)."""
    if mode == "bat":
        return reference.bone_bat_weight(weight.float(), block.float()).to(weight.dtype)
    return (weight.float() + _delta(block.float(), *weight.shape)).to(weight.dtype)


def _restored(merged: torch.Tensor, block: torch.Tensor, mode: str) -> torch.Tensor:
    """W from W' [out, in]: bat through (I + B_i)^-1 in fp32, the others by subtraction."""
    if mode != "bat":
        return (merged.float() - _delta(block.float(), *merged.shape)).to(merged.dtype)
    out_features, in_features = merged.shape
    r = block.shape[-1]
    b = block.float()[:, None]  # [out/r, 1, r, r]
    w = merged.float().view(out_features // r, r, in_features // r, r).transpose(1, 2)
    restored = torch.linalg.solve(
        (torch.eye(r, device=b.device) + b).transpose(-1, -2), (w - b).transpose(-1, -2)
    ).transpose(-1, -2)
    return restored.transpose(1, 2).reshape(out_features, in_features).to(merged.dtype)


class BoneExperts(torch.nn.Module):
    """Parametrization of a fused experts tensor W [E, out, in]: W' with one block per expert,
    `miss_block` [E, *B's shape]."""

    def __init__(self, weight: torch.Tensor, mode: str, r: int, mini_r: int, name: str):
        super().__init__()
        shape = _block_shape(mode, r, mini_r, weight.shape[1], weight.shape[2], name)
        self.miss_block = torch.nn.Parameter(
            torch.zeros(weight.shape[0], *shape, dtype=weight.dtype, device=weight.device)
        )
        self.mode, self.merged = mode, False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return weight
        if self.mode == "bat":
            return bone_bat_weight(weight, self.miss_block)
        return weight + _delta(self.miss_block, *weight.shape[1:])


def _matches(name: str, targets: list[str] | str) -> bool:
    """PEFT's rule: a list matches a name equal to or ending in "." + an entry; a string is a
    regular expression the whole name must match."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def apply(
    model: torch.nn.Module,
    r: int = 64,
    mode: str = "bat",
    target_modules: list[str] | str = (),
    mini_r: int = 1,
) -> list[str]:
    """Adapt every nn.Linear whose name is or ends with a target and every 3-D experts parameter
    whose name does (a string target_modules is a regular expression the whole name matches: PEFT's
    rules); freezes the rest of the model; returns the adapted names. Raises ValueError, before
    changing anything, for a target that matches nothing and for shapes the mode cannot take."""
    if not target_modules:
        raise ValueError("bone: give target_modules, e.g. ['q_proj', 'v_proj'] or ['experts.gate_up_proj']")
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    linears = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and _matches(name, targets)
    }
    experts = {name: p for name, p in model.named_parameters() if p.dim() == 3 and _matches(name, targets)}
    each = [targets] if isinstance(targets, str) else [[target] for target in targets]
    for target in each:
        if not any(_matches(name, target) for name in [*linears, *experts]):
            raise ValueError(
                f"bone: no nn.Linear or 3-D experts parameter of {type(model).__name__} matches {target!r}"
            )
    for name, m in linears.items():
        _block_shape(mode, r, mini_r, m.out_features, m.in_features, name)
    for name, p in experts.items():
        _block_shape(mode, r, mini_r, p.shape[1], p.shape[2], name)
    model.requires_grad_(False)
    for name, m in linears.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, BoneLinear(m, mode, r, mini_r, name))
    for name, p in experts.items():
        parent, _, child = name.rpartition(".")
        parametrize.register_parametrization(
            model.get_submodule(parent), child, BoneExperts(p, mode, r, mini_r, name)
        )
    model.moeweave_bone = {"r": r, "mode": mode, "mini_r": mini_r, "target_modules": targets}
    return [*linears, *experts]


def _adapted(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, object]]:
    """(base weight, B, the BoneLinear / BoneExperts holding the merged flag) of every adapted
    matrix; an experts tensor gives one entry per expert."""
    found = []
    for module in model.modules():
        if isinstance(module, BoneLinear):
            found.append((module.base_layer.weight, module.miss_block, module))
        elif parametrize.is_parametrized(module):
            for chain in module.parametrizations.values():
                for p in chain:
                    if isinstance(p, BoneExperts):
                        found += [(w, b, p) for w, b in zip(chain.original, p.miss_block, strict=True)]
    if not found:
        raise ValueError(f"bone: {type(model).__name__} has no Bone adapter (bone.apply first)")
    return found


@torch.no_grad()
def merge(model: torch.nn.Module) -> None:
    """W <- W' in every adapted matrix (the forward then runs the plain base weights)."""
    for weight, block, owner in _adapted(model):
        if not owner.merged:
            weight.copy_(_merged(weight, block, owner.mode))
    for _, _, owner in _adapted(model):
        owner.merged = True


@torch.no_grad()
def unmerge(model: torch.nn.Module) -> None:
    """W' -> W again (bat: through (I + B_i)^-1 in fp32, so W comes back up to rounding)."""
    for weight, block, owner in _adapted(model):
        if owner.merged:
            weight.copy_(_restored(weight, block, owner.mode))
    for _, _, owner in _adapted(model):
        owner.merged = False


def _blocks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's adapter keys -> B, for every adapted linear layer and experts tensor."""
    blocks = {}
    for name, module in model.named_modules():
        if isinstance(module, BoneLinear):
            blocks[f"{_PEFT_PREFIX}{name}.miss_block"] = module.miss_block
        elif parametrize.is_parametrized(module):
            for attr, chain in module.parametrizations.items():
                for p in chain:
                    if isinstance(p, BoneExperts):
                        blocks[f"{_PEFT_PREFIX}{name}.{attr}.miss_block"] = p.miss_block
    return blocks


def save_adapter(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write the adapter in PEFT's MiSS format: adapter_config.json (peft_type "MISS") and
    adapter_model.safetensors with `base_model.model.<module>.miss_block` tensors."""
    settings = getattr(model, "moeweave_bone", None)
    if settings is None:
        raise ValueError(f"bone: {type(model).__name__} has no Bone adapter (bone.apply first)")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    (out / CONFIG).write_text(json.dumps({
        "peft_type": "MISS",
        "r": settings["r"],
        "mini_r": settings["mini_r"],
        "init_weights": _PEFT_INIT[settings["mode"]],
        "target_modules": settings["target_modules"],
        "base_model_name_or_path": getattr(config, "_name_or_path", None) or None,
        "miss_dropout": 0.0,
        "bias": "none",
        "task_type": "CAUSAL_LM" if config is not None else None,
        "inference_mode": True,
    }, indent=2))  # fmt: skip
    save_file({key: b.detach().contiguous() for key, b in _blocks(model).items()}, out / WEIGHTS)
    return out


def load_adapter(model: torch.nn.Module, directory: str | Path) -> list[str]:
    """Apply the MiSS adapter of `directory` (ours or PEFT's) to a base model; every tensor is
    checked against the base (a missing module or a shape of another base is refused, named)."""
    path = Path(directory)
    config = json.loads((path / CONFIG).read_text())
    if config.get("peft_type") != "MISS":
        raise ValueError(f"bone: {path / CONFIG} is a {config.get('peft_type')!r} adapter, not MISS")
    init = config.get("init_weights", True)
    if not isinstance(init, bool) and init not in ("bat", "mini"):
        raise ValueError(
            f"bone: {path / CONFIG} has init_weights {init!r}; MiSS knows true/false, 'bat', 'mini'"
        )
    mode = "default" if isinstance(init, bool) else init  # false: default mode, started at random
    targets = config["target_modules"]
    tensors = load_file(path / WEIGHTS)
    names = apply(model, r=config["r"], mode=mode, target_modules=targets, mini_r=config.get("mini_r", 1))
    blocks = _blocks(model)
    block_names = {
        key: re.sub(r"\.miss_block\.[^.]+$", ".miss_block", key) for key in tensors
    }  # PEFT may keep the adapter name
    for key, tensor in tensors.items():
        name = block_names[key]
        if name not in blocks:
            raise ValueError(f"bone: the adapter's {key} has no module in this model")
        if tensor.shape != blocks[name].shape:
            raise ValueError(
                f"bone: the adapter's {key} is {list(tensor.shape)} but this model needs {list(blocks[name].shape)}"
            )
        with torch.no_grad():
            blocks[name].copy_(tensor)
    missing = sorted(set(blocks) - set(block_names.values()))
    if missing:
        raise ValueError(f"bone: the adapter has no tensor for {missing[:3]}")
    return names
