"""Training hooks: on transformers' MoE models, auxiliary-loss-free load balancing (`balance`) and
expert-specialised fine-tuning (`esft`: expert scores, selection, freezing, adapter export); on any
model, LIFT's sparse fine-tuning of principal weights (`lift`), WAGLE's unlearning masks (`wagle`)
and the weight compander (`compander`)."""

from moeweave.train import balance, compander, esft, lift, wagle

__all__ = ["balance", "compander", "esft", "lift", "wagle"]
