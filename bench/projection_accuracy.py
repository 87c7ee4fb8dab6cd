"""What do quantised dense projections cost in accuracy? On the bundled model: held-out
perplexity and the bytes a decode step reads outside the routed experts, for every pair of an
expert format and a projection format (attention, dense-MLP, shared-expert and LM-head weights),
all on the same held-out tokens in one run, dense weights in the checkpoint's bf16 (as
`moeweave run` loads them) against fp32 experts and projections. It backs load()'s default: INT8 projections whenever
the experts are quantised.

    python bench/projection_accuracy.py
"""

import math

import torch

from moeweave.engine.calibration import calibration_text, mean_loss, token_chunks
from moeweave.models import load
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.load import PROJECTION_FORMATS

TOKENS = 8192
EXPERT_FORMATS = ("bf16", "int8", "int4")


def main() -> None:
    reference = load(DEMO_MODEL_DIR, experts="fp32", projections="float")
    chunks = token_chunks(reference.tokenizer, calibration_text(DEMO_MODEL_DIR, None), TOKENS)
    base = math.exp(mean_loss(reference, chunks))
    tokens = sum(c.shape[1] - 1 for c in chunks)
    print(f"# bundled model, {tokens} held-out tokens; fp32 experts and projections: perplexity {base:.3f}")
    print(f"{'experts':<8} {'projections':<12} {'dense KiB/token':>15} {'perplexity':>10} {'delta':>8}")
    for experts in EXPERT_FORMATS:
        for projections in PROJECTION_FORMATS:
            model = load(DEMO_MODEL_DIR, experts=experts, dtype=torch.bfloat16, projections=projections)
            ppl = math.exp(mean_loss(model, chunks))
            print(f"{experts:<8} {projections:<12} {model.dense_bytes_per_token() / 1024:>15.1f} "
                  f"{ppl:>10.3f} {ppl / base - 1:>+8.2%}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
