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


def synthetic_adapters(root: Path, adapters: dict[str, tuple[int, float]]) -> Path:
    """Writes synthetic ESFT adapters of the bundled model into root/NAME, one per name ->
    (seed, fraction of experts tuned); returns root."""
    from moeweave.adapters import random_selection, save_esft, synth_adapter
    from moeweave.models.bundled import DEMO_MODEL_DIR
    from moeweave.models.spec import spec_from_config

    spec = spec_from_config(read_config(DEMO_MODEL_DIR))
    for name, (seed, fraction) in adapters.items():
        save_esft(
            synth_adapter(DEMO_MODEL_DIR, random_selection(spec, fraction, seed), seed, name), root / name
        )
    return root


def merged_texts(adapter_dir: Path, names, prompt: str, new_tokens: int, scratch) -> dict[str, str]:
    """Model name -> the greedy text of `prompt` from the bundled model ("demo_model") and from
    each adapter's merged model, each run alone (INT4 experts, bf16). scratch() -> a new folder."""
    import torch

    import moeweave.models
    from moeweave.adapters import load_esft
    from moeweave.models.bundled import DEMO_MODEL_DIR

    def text(path: Path) -> str:
        model = moeweave.models.load(path, experts="int4", dtype=torch.bfloat16)
        return model.generate(prompt, max_new_tokens=new_tokens).text

    spec = moeweave.models.load(DEMO_MODEL_DIR, experts="int4", dtype=torch.bfloat16).spec
    out = {"demo_model": text(DEMO_MODEL_DIR)}
    for name in names:
        adapter = load_esft(adapter_dir / name, spec)
        out[name] = text(merged_checkpoint(DEMO_MODEL_DIR, adapter, scratch() / "merged"))
    return out
