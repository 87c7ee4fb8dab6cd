"""Tiny random transformers MoE models built in memory for the training-hook tests, from the
config dicts of the `tiny_config` fixture, with routing spread as in conftest's save_random_model."""

import torch
import transformers


def tiny_moe(config: dict, seed: int = 0) -> torch.nn.Module:
    """The model of a config.json dict (as `tiny_config` returns), random, in eval mode."""
    fields = dict(config)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    )
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, 0.15)
    return model.eval()


def token_batch(seed: int, batch: int = 4, length: int = 16) -> torch.Tensor:
    """input_ids [batch, length] over the fixture vocabulary (97)."""
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(seed))
