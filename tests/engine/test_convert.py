"""`moeweave convert --bits auto` on the bundled model: the store it writes keeps calibration
perplexity within the tolerance of the all-INT4 model (measured independently, through the
engine and models.load), its low-bit experts are the least important ones (at the same bytes, a
random choice of as many experts costs more perplexity), and the command reports it."""

import math
import random

import torch

import moeweave.models
from moeweave.engine import Engine
from moeweave.engine.calibration import calibration_text, mean_loss, token_chunks
from moeweave.engine.convert import convert
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.moe_block import MoEBlock
from moeweave.quant.policy import quantize_as
from moeweave.store.checkpoint import ExpertCheckpoint
from moeweave.store.manifest import load_manifest

TOKENS = 512
TOLERANCE = 0.05


def test_auto_bitwidths_keep_the_tolerance_and_beat_a_random_choice(tmp_path, capsys):
    store = tmp_path / "store"
    convert(DEMO_MODEL_DIR, store, bits="auto", tolerance=TOLERANCE, calib_tokens=TOKENS)
    report = capsys.readouterr().out
    low = {(e.layer, e.expert) for e in load_manifest(store).extents if e.projections["gate"].bits == 2}
    assert 0 < len(low) < 96 and f"{len(low)} of 96 experts at 2 bits" in report

    model, tables = int4_model()
    chunks = token_chunks(model.tokenizer, calibration_text(DEMO_MODEL_DIR, None), TOKENS)
    high = mean_loss(model, chunks)
    with Engine.open(store, predictor="none") as engine:
        chosen = mean_loss(engine.model, chunks)
    assert math.exp(chosen) <= math.exp(high) * (1 + TOLERANCE)

    keys = [(layer, e) for layer, table in tables.items() for e in range(len(table))]
    with ExpertCheckpoint(DEMO_MODEL_DIR) as checkpoint:
        two_bit = {
            key: tuple(quantize_as(w, "int2") for w in checkpoint.expert(*key)[0].values()) for key in keys
        }
    for seed in range(3):  # as many experts at 2 bits (the same bytes), chosen at random
        model, random_tables = int4_model()
        for key in random.Random(seed).sample(keys, len(low)):
            random_tables[key[0]].set_slot(key[1], two_bit[key])
        assert mean_loss(model, chunks) > chosen


def int4_model():
    """The all-INT4 in-RAM model and its experts' table slots {(layer, expert): ...} by layer."""
    model = moeweave.models.load(DEMO_MODEL_DIR, experts="int4", dtype=torch.bfloat16)
    tables = {
        i: layer.mlp.experts.tables[i]
        for i, layer in enumerate(model.layers)
        if isinstance(layer.mlp, MoEBlock)
    }
    return model, _Slots(tables)


class _Slots(dict):
    """{layer: ExpertTable} that iterates over (layer, expert) keys."""

    def __iter__(self):
        return iter([(layer, e) for layer, table in self.items() for e in range(len(table))])
