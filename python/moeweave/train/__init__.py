"""Training hooks on transformers' MoE models: auxiliary-loss-free load balancing (`balance`)."""

from moeweave.train import balance

__all__ = ["balance"]
