"""Does EdgeMoE's expert-wise bitwidth search buy quality per byte? On the bundled model: the
calibration perplexity and expert bytes of uniform INT2, INT3 and INT4 stores against `auto`
stores (INT2/INT4 mixes) at several tolerances, all measured in one run on the same held-out
calibration tokens (through the engine, so what is measured is what the store holds).

    python bench/auto_bitwidths.py
"""

import math
import tempfile
from pathlib import Path

from moeweave.engine import Engine
from moeweave.engine.calibration import calibration_text, mean_loss, token_chunks
from moeweave.engine.convert import convert
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.store.manifest import load_manifest

TOKENS = 4096
TOLERANCES = (0.01, 0.02, 0.05, 0.10, 0.20)


def measure(store: Path, chunks) -> tuple[float, int, int]:
    """(calibration perplexity, expert bytes, experts at 2 bits) of a store."""
    extents = load_manifest(store).extents
    with Engine.open(store, predictor="none") as engine:
        loss = mean_loss(engine.model, chunks)
    low = sum(e.projections["gate"].bits == 2 for e in extents)
    return math.exp(loss), sum(e.length for e in extents), low


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        chunks = None
        for label, bits, tolerance in [*((f"uniform int{b}", str(b), 0.0) for b in (2, 3, 4)),
                                       *((f"auto +{t:.0%}", "auto", t) for t in TOLERANCES)]:  # fmt: skip
            store = Path(tmp) / label.replace(" ", "_").replace("+", "").replace("%", "")
            convert(DEMO_MODEL_DIR, store, bits=bits, tolerance=tolerance, calib_tokens=TOKENS)
            if chunks is None:
                with Engine.open(store) as engine:
                    chunks = token_chunks(
                        engine.model.tokenizer, calibration_text(DEMO_MODEL_DIR, None), TOKENS
                    )
            rows.append((label, *measure(store, chunks)))
    print(f"\n{'store':<14} {'int2 experts':>12} {'expert MiB':>10} {'perplexity':>10}")
    for label, ppl, nbytes, low in rows:
        print(f"{label:<14} {low:>12} {nbytes / 2**20:>10.2f} {ppl:>10.3f}")


if __name__ == "__main__":
    main()
