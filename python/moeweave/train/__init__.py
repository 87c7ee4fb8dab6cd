"""Training hooks: on transformers' MoE models, auxiliary-loss-free load balancing (`balance`) and
expert-specialised fine-tuning (`esft`: expert scores, selection, freezing, adapter export); on any
model, Bone / MiSS adapters (`bone`, PEFT's format, fused experts too), LIFT's sparse fine-tuning
of principal weights (`lift`), WAGLE's unlearning masks (`wagle`) and the weight compander
(`compander`)."""

from moeweave.train import balance, bone, compander, esft, lift, wagle

__all__ = ["balance", "bone", "compander", "esft", "lift", "wagle"]
