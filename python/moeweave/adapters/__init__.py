"""Expert-specialised adapters (ESFT) served over one shared MoE base (ExpertWeave): the ESFT
format, synthetic adapters, the expert pool and the adapter set that reroutes each token to its
request's experts."""

from moeweave.adapters.adapter_set import BASE, AdapterSet
from moeweave.adapters.esft import AdapterError, EsftAdapter, load_esft, read_selection, save_esft
from moeweave.adapters.synth import random_selection, synth_adapter

__all__ = [
    "BASE",
    "AdapterError",
    "AdapterSet",
    "EsftAdapter",
    "load_esft",
    "random_selection",
    "read_selection",
    "save_esft",
    "synth_adapter",
]
