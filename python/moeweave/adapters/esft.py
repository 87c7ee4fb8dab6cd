"""ESFT adapters (SPEC §2; ESFT, arXiv 2407.01906): a fine-tune that changed only some routed
experts of an MoE base, stored as full replacement weights of those experts.

On disk, a directory with
  expert_cfg.json   {"experts": {"L": [E, ...], ...}, "shared_experts": false,
                     "non_expert_modules": false}  (L a decoder layer index, as DeepSeek's ESFT writes)
  *.safetensors     model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight for each listed expert
                    (the legacy form omits "model.")
Adapters that also tuned the shared experts or the non-expert modules change weights every
request shares, so they cannot be served beside others over one base: they are refused.

Dimension legend: H hidden, I expert intermediate size.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moeweave.formats.paths import confined
from moeweave.models.spec import ModelSpec

CONFIG_FILE = "expert_cfg.json"
WEIGHTS_FILE = "experts.safetensors"
PROJECTIONS = ("gate", "up", "down")
_NAME = re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")


class AdapterError(ValueError):
    """An adapter that does not fit its base or is malformed; the message names the file and,
    where one is involved, the tensor."""


@dataclass
class EsftAdapter:
    """experts: (layer, expert) -> (gate [I, H], up [I, H], down [H, I]), the replacement weights."""

    name: str
    experts: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

    @property
    def selection(self) -> dict[int, list[int]]:
        """layer -> its tuned experts, sorted."""
        chosen: dict[int, list[int]] = {}
        for layer, expert in sorted(self.experts):
            chosen.setdefault(layer, []).append(expert)
        return chosen

    @property
    def nbytes(self) -> int:
        return sum(w.numel() * w.element_size() for weights in self.experts.values() for w in weights)


def read_selection(path: str | Path) -> dict[int, list[int]]:
    """The experts an expert_cfg.json lists: layer -> expert ids (as written)."""
    path = Path(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AdapterError(f"{path}: cannot read the expert config ({error})") from None
    if type(body) is not dict or type(body.get("experts")) is not dict:
        raise AdapterError(f'{path}: expected an object with an "experts" object (layer -> expert ids)')
    for key in ("shared_experts", "non_expert_modules"):
        if body.get(key, False):
            raise AdapterError(
                f"{path}: {key} is true: the adapter changed weights every request shares, so it cannot be "
                "served over a shared base (moeweave serves expert-only ESFT adapters)"
            )
    selection = {}
    for layer, experts in body["experts"].items():
        if (
            not layer.isdigit()
            or type(experts) is not list
            or any(type(e) is not int or e < 0 for e in experts)
        ):
            raise AdapterError(f"{path}: experts[{layer!r}] must map a layer index to a list of expert ids")
        if len(set(experts)) != len(experts):
            raise AdapterError(f"{path}: experts[{layer!r}] lists an expert twice: {experts}")
        if experts:
            selection[int(layer)] = list(experts)
    return selection


def check_selection(selection: dict[int, list[int]], spec: ModelSpec, where: str) -> None:
    """Every listed layer is an MoE layer of the base and every expert one of its routed experts."""
    for layer, experts in selection.items():
        if not (0 <= layer < spec.num_layers and spec.moe_layers[layer]):
            moe = [i for i, is_moe in enumerate(spec.moe_layers) if is_moe]
            raise AdapterError(f"{where}: layer {layer} is not an MoE layer of the base (those are {moe})")
        for expert in experts:
            if expert >= spec.num_experts:
                raise AdapterError(
                    f"{where}: layer {layer} expert {expert}: the base has {spec.num_experts} routed experts"
                )


def load_esft(path: str | Path, spec: ModelSpec, name: str | None = None) -> EsftAdapter:
    """Reads and checks the ESFT adapter in directory `path` against the base model's spec:
    every listed expert's three projections present once, with the base's shapes, nothing else."""
    path = Path(path)
    selection = read_selection(path / CONFIG_FILE)
    check_selection(selection, spec, str(path / CONFIG_FILE))
    wanted = {(layer, e) for layer, experts in selection.items() for e in experts}
    hidden, inter = spec.hidden_size, spec.moe_intermediate_size
    shapes = {"gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}
    found: dict[tuple[int, int, str], torch.Tensor] = {}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise AdapterError(f"{path}: no *.safetensors files beside {CONFIG_FILE}")
    for file in files:
        confined(path, file.name, str(path))  # no symlink out of the adapter directory
        with safe_open(file, "pt") as weights:
            for tensor_name in weights.keys():  # noqa: SIM118 (safe_open has no `in`)
                match = _NAME.match(tensor_name)
                if match is None:
                    raise AdapterError(
                        f"{file}: tensor {tensor_name!r} is not an expert projection "
                        "(model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight)"
                    )
                layer, expert, projection = int(match[1]), int(match[2]), match[3]
                if (layer, expert) not in wanted:
                    raise AdapterError(
                        f"{file}: tensor {tensor_name!r} is for layer {layer} expert {expert}, which "
                        f"{CONFIG_FILE} does not list"
                    )
                if (layer, expert, projection) in found:
                    raise AdapterError(f"{file}: tensor {tensor_name!r} is given twice")
                tensor = weights.get_tensor(tensor_name)
                if not tensor.is_floating_point():
                    raise AdapterError(
                        f"{file}: tensor {tensor_name!r} is {tensor.dtype}, not floating point"
                    )
                if tuple(tensor.shape) != shapes[projection]:
                    raise AdapterError(
                        f"{file}: tensor {tensor_name!r} has shape {list(tensor.shape)}; the base's "
                        f"{projection} projection is {list(shapes[projection])}"
                    )
                found[(layer, expert, projection)] = tensor
    missing = [
        f"model.layers.{layer}.mlp.experts.{e}.{p}_proj.weight"
        for layer, e in sorted(wanted)
        for p in PROJECTIONS
        if (layer, e, p) not in found
    ]
    if missing:
        raise AdapterError(f"{path}: {len(missing)} listed expert tensors are missing, first {missing[0]!r}")
    experts = {key: tuple(found[(*key, p)] for p in PROJECTIONS) for key in sorted(wanted)}
    return EsftAdapter(name or path.name, experts)


def save_esft(adapter: EsftAdapter, path: str | Path) -> Path:
    """Writes `adapter` in the ESFT format into directory `path` (created; must be new or empty)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path}: not empty; save_esft needs a new or empty directory")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"model.layers.{layer}.mlp.experts.{e}.{p}_proj.weight": w.contiguous()
        for (layer, e), weights in adapter.experts.items()
        for p, w in zip(PROJECTIONS, weights, strict=True)
    }
    save_file(tensors, path / WEIGHTS_FILE, metadata={"format": "pt"})
    write_selection(adapter.selection, path / CONFIG_FILE)
    return path


def write_selection(selection: dict[int, list[int]], path: str | Path) -> None:
    """An expert_cfg.json listing `selection` (layer -> expert ids) as the only tuned weights."""
    config = {
        "experts": {str(layer): experts for layer, experts in selection.items()},
        "shared_experts": False,
        "non_expert_modules": False,
    }
    Path(path).write_text(json.dumps(config, sort_keys=True) + "\n", encoding="utf-8")
