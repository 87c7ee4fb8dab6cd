"""The native decode step (every layer in one C++ call) against the model's Python forward, which
transformers checks in test_parity.py: bit for bit where both call the same kernels (GQA, batches
of up to two rows), within bf16 rounding beyond (the Python router's product then goes to torch)
and for DeepSeek-V2's MLA, on a left-padded batch decoding several tokens; in the server's
ragged batch with adapters; the bundled model against transformers' greedy tokens; and the
models it refuses run on the Python forward."""

import pytest
import torch
import transformers

import moeweave.models
from moeweave import _native
from moeweave.adapters import AdapterSet, random_selection, synth_adapter
from moeweave.models import KVCache
from moeweave.models.bundled import DEMO_MODEL_DIR
from moeweave.models.native_decode import layer_fields, unsupported
from moeweave.ops._launch import capsules
from moeweave.serve.ragged import Chunk, forward_chunks

pytestmark = pytest.mark.skipif(_native.module_for("cpu") is None, reason="needs the native module")

# GQA architectures the step covers; OLMoE without clip_qkv (clipping stays on the Python path).
NATIVE = {"qwen3_moe": {}, "qwen2_moe": {}, "mixtral": {}, "olmoe": {"clip_qkv": None}}
# DeepSeek-V2's MLA with its greedy router (the group-limited one stays on the Python path).
MLA_GREEDY = {"topk_method": "greedy", "n_group": 1, "topk_group": 1}
EVERY_NATIVE = {
    **{name: (name, overrides) for name, overrides in NATIVE.items()},
    "deepseek_v2": ("deepseek_v2", MLA_GREEDY),
}
STEPS = 5


@pytest.fixture(params=sorted(NATIVE))
def native_checkpoint(request, tiny_checkpoint):
    return tiny_checkpoint(request.param, **NATIVE[request.param])


@pytest.fixture(params=sorted(EVERY_NATIVE))
def every_native_checkpoint(request, tiny_checkpoint):
    """The GQA architectures, and MLA: bit for bit does not hold there (its W_UK and W_UV
    products and the fp32 router product sum in another order than torch's)."""
    architecture, overrides = EVERY_NATIVE[request.param]
    return tiny_checkpoint(architecture, **overrides)


def greedy_steps(model, native: bool, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decode steps after the prompt, on one path: the tokens fed [B, STEPS] and the
    logits they gave [STEPS, B, V]."""
    model.use_native_decode = native
    cache = KVCache()
    logits = model(ids, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1]
    fed, steps = [], []
    for _ in range(STEPS):
        fed.append(logits.argmax(-1, keepdim=True))
        logits = model(fed[-1], cache=cache).logits[:, -1]
        steps.append(logits)
    return torch.cat(fed, dim=1), torch.stack(steps)


def decode_logits(model, native: bool, ids, mask) -> torch.Tensor:
    return greedy_steps(model, native, ids, mask)[1]


def padded_prompts(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(2, 97, (batch, 7), generator=torch.Generator().manual_seed(batch))
    mask = torch.ones(batch, 7, dtype=torch.int64)
    mask[0, :3] = 0  # the first row is left-padded
    return ids, mask


@pytest.mark.parametrize(("experts", "projections"), [("int4", "int8"), ("int4", "float"), ("bf16", "float")])
@pytest.mark.parametrize("batch", [1, 2])
def test_native_steps_equal_the_python_forward_bit_for_bit(native_checkpoint, experts, projections, batch):
    model = moeweave.models.load(
        native_checkpoint, experts=experts, dtype=torch.bfloat16, projections=projections
    )
    assert unsupported(model) is None
    ids, mask = padded_prompts(batch)
    assert torch.equal(decode_logits(model, True, ids, mask), decode_logits(model, False, ids, mask))


def close_but_for_routing_flips(native: torch.Tensor, python: torch.Tensor) -> None:
    """Per position (step, row), max |difference| / max |logit| within 2 %, but for at most one
    position in eight: a router near-tie that the two router products round apart changes that
    position's experts (test_parity.py allows the same)."""
    error = (native - python).abs().amax(-1) / python.abs().max()
    assert int((error >= 0.02).sum()) <= error.numel() // 8, f"errors per position {error}"


def test_wider_batches_agree_within_bf16_rounding(every_native_checkpoint):
    model = moeweave.models.load(every_native_checkpoint, experts="int4", dtype=torch.bfloat16)
    ids, mask = padded_prompts(4)
    close_but_for_routing_flips(decode_logits(model, True, ids, mask), decode_logits(model, False, ids, mask))


@pytest.mark.parametrize("q_lora_rank", [48, None], ids=["q_lora", "q_direct"])
@pytest.mark.parametrize("batch", [1, 2])
def test_mla_steps_agree_with_the_python_forward(tiny_checkpoint, q_lora_rank, batch):
    path = tiny_checkpoint("deepseek_v2", q_lora_rank=q_lora_rank, **MLA_GREEDY)
    model = moeweave.models.load(path, experts="int4", dtype=torch.bfloat16)
    assert unsupported(model) is None
    ids, mask = padded_prompts(batch)
    native, python = decode_logits(model, True, ids, mask), decode_logits(model, False, ids, mask)
    close_but_for_routing_flips(native, python)


def test_the_bundled_model_decodes_the_greedy_tokens_of_transformers():
    """The trained bundled model in bf16 through the native step against transformers' own
    greedy generation in bf16 (random fixture models have router near-ties that bf16 flips)."""
    model = moeweave.models.load(DEMO_MODEL_DIR, experts="bf16", dtype=torch.bfloat16, projections="float")
    assert model.native_decoder() is not None
    prompt = model.tokenizer.encode("In 1905, the").ids
    ours = model.generate(prompt, max_new_tokens=24, stop_at_eos=False).tokens
    reference = transformers.AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.bfloat16).eval()
    theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    assert ours == theirs[0, len(prompt) :].tolist()


def test_a_ragged_batch_with_adapters_gets_what_the_python_forward_gives(every_native_checkpoint):
    """The server's batch: sequences at different positions, on the base and two adapters; decode
    steps run natively once every chunk has one token (the Python forward is the oracle)."""
    model = moeweave.models.load(every_native_checkpoint, experts="int4", dtype=torch.bfloat16)
    adapters = AdapterSet(model, max_adapters=2)
    ids = [
        adapters.load(
            synth_adapter(
                every_native_checkpoint, random_selection(model.spec, 0.5, seed), seed=seed, name=f"a{seed}"
            )
        )
        for seed in (1, 2)
    ]
    prompts = [[5, 9, 2, 7, 1], [3, 3, 8], [11, 4, 6, 2, 9, 10, 12]]
    results = []
    for native in (True, False):
        model.use_native_decode = native
        chunks = [Chunk(list(p), adapter=a) for p, a in zip(prompts, [-1, *ids], strict=True)]
        steps = []
        for _ in range(STEPS):
            logits = forward_chunks(model, chunks)
            steps.append(logits)
            for chunk, row in zip(chunks, logits, strict=True):
                chunk.ids = [int(row.argmax())]
        results.append(torch.stack(steps))
    close_but_for_routing_flips(*results)


@pytest.mark.parametrize(
    ("architecture", "dtype", "reason"),
    [
        ("deepseek_v2", torch.bfloat16, "routers"),  # group-limited greedy
        ("deepseek_v3", torch.bfloat16, "routers"),
        ("deepseek_v3_half_split", torch.bfloat16, "half-split RoPE"),
        ("olmoe", torch.bfloat16, "attention variant"),  # clip_qkv
        ("mixtral", torch.float32, "not bf16"),
    ],
)
def test_other_models_stay_on_the_python_forward(tiny_checkpoint, architecture, dtype, reason):
    model = moeweave.models.load(tiny_checkpoint(architecture), experts="int4", dtype=dtype)
    assert reason in unsupported(model)
    assert model.native_decoder() is None
    assert len(model.generate([5, 9, 2], max_new_tokens=3, stop_at_eos=False).tokens) == 3


def test_weights_that_do_not_fit_the_config_are_refused_by_name(native_checkpoint):
    model = moeweave.models.load(native_checkpoint, experts="int4", dtype=torch.bfloat16)
    spec = model.spec
    layers = [layer_fields(index, layer) for index, layer in enumerate(model.layers)]
    with pytest.raises(ValueError, match="'input_norm' must have 96 entries"):
        _native.module_for("cpu").DecodeStack(
            96, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.top_k, True, 0, 1e-6, layers
        )


def test_mla_weights_that_do_not_fit_the_config_are_refused_by_name(tiny_checkpoint):
    model = moeweave.models.load(
        tiny_checkpoint("deepseek_v2", **MLA_GREEDY), experts="int4", dtype=torch.bfloat16
    )
    decoder = model.native_decoder()
    assert decoder is not None
    layers = [layer_fields(index, layer) for index, layer in enumerate(model.layers)]
    layers[1]["w_uk"] = capsules(model.layers[1].attention.w_uv)[0]  # [nH, C, Dv] where [nH, N, C] belongs
    spec = model.spec
    mla = dict(q_lora_rank=spec.q_lora_rank, kv_lora_rank=spec.kv_lora_rank, nope=spec.qk_nope_head_dim,
               rope=spec.qk_rope_head_dim, v_head_dim=spec.v_head_dim, scale=0.1, latent_eps=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="'w_uk' has the wrong shape"):
        _native.module_for("cpu").DecodeStack(
            spec.hidden_size,
            spec.num_heads,
            1,
            spec.qk_rope_head_dim,
            spec.top_k,
            False,
            0,
            1e-6,
            layers,
            mla,
            1,
            1.0,
        )
