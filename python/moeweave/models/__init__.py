"""MoE model execution on moeweave's kernels: load a Hugging Face checkpoint (Mixtral,
Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3) and run it with moeweave's own forward, KV cache and generation.
"""

from moeweave.models.experts import ExpertProvider, FusedExperts, TorchExperts
from moeweave.models.load import EXPERT_FORMATS, load
from moeweave.models.model import CausalLMOutput, KVCache, MoEModel

__all__ = [
    "EXPERT_FORMATS",
    "CausalLMOutput",
    "ExpertProvider",
    "FusedExperts",
    "KVCache",
    "MoEModel",
    "TorchExperts",
    "load",
]
