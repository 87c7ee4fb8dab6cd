"""The oracle of adapter serving: the merged model, a copy of the base checkpoint whose tuned
experts' tensors are replaced by the adapter's (what ESFT's own loader does to a transformers
model), loaded like any checkpoint."""

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from moeweave.adapters import EsftAdapter
from moeweave.formats.expert_naming import ARCHITECTURES
from moeweave.formats.hf_checkpoint import read_config, safetensors_files


def merged_checkpoint(base: Path, adapter: EsftAdapter, out: Path) -> Path:
    naming = ARCHITECTURES[read_config(base)["model_type"]]
    replacements = {
        naming.tensor(layer, e, index): w
        for (layer, e), weights in adapter.experts.items()
        for index, w in enumerate(weights)
    }
    out.mkdir(parents=True)
    for file in base.iterdir():
        if file.suffix != ".safetensors" and file.is_file():
            shutil.copyfile(file, out / file.name)
    for file in safetensors_files(base):
        tensors = load_file(file)
        for name in tensors.keys() & replacements.keys():
            assert tensors[name].shape == replacements[name].shape
            tensors[name] = replacements.pop(name).to(tensors[name].dtype)
        save_file(tensors, out / file.name, metadata={"format": "pt"})
    assert not replacements, f"tensors not found in the base: {sorted(replacements)[:3]}"
    return out
