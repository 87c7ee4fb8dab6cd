"""Training hooks on transformers' MoE models: auxiliary-loss-free load balancing (`balance`) and
expert-specialised fine-tuning (`esft`: expert scores, selection, freezing, adapter export)."""

from moeweave.train import balance, esft

__all__ = ["balance", "esft"]
