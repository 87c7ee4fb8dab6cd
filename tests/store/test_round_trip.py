"""Write -> read round trips against moeweave.quant.quantize applied to the checkpoint's own
tensors (loaded by name with safetensors, not through the store's code): every bit width,
symmetric and asymmetric, every scale dtype, bit-exact; unquantised experts equal the bf16 cast;
the same input gives the same bytes; the read views feed the fused MoE op as they are."""

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from moeweave.ops import moe_experts
from moeweave.quant import ExpertTable, quantize
from moeweave.store import ExpertStore, write_store

# Qwen3-MoE's names: model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight
NAMES = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
BITS_MAP = {"0.0": 2, "0.1": 3, "0.2": 4, "0.3": 8, "1.0": 16, "1.1": 3, "default": 4}


def hf_tensor(tensors: dict, layer: int, expert: int, projection: str) -> torch.Tensor:
    return tensors[f"model.layers.{layer}.mlp.experts.{expert}.{NAMES[projection]}.weight"]


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sym", [True, False])
def test_round_trip_is_bit_exact(hf_checkpoint, same_quantized, tmp_path, sym, scale_dtype):
    source = hf_checkpoint("qwen3_moe")
    write_store(
        source, tmp_path, bits=BITS_MAP, group_size=64, sym=sym, scale_dtype=scale_dtype, progress=False
    )
    tensors = load_file(source / "model.safetensors")
    with ExpertStore(tmp_path) as store:
        assert store.experts() == [(layer, e) for layer in range(2) for e in range(4)]
        for layer, e in store.experts():
            bits = BITS_MAP.get(f"{layer}.{e}", BITS_MAP["default"])
            expert = store.read(layer, e)
            for projection in ("gate", "up", "down"):
                w = hf_tensor(tensors, layer, e, projection)
                got = getattr(expert, projection)
                where = f"layer {layer} expert {e} {projection}"
                if bits == 16:
                    assert got.dtype == torch.bfloat16 and torch.equal(got, w.to(torch.bfloat16)), where
                else:
                    want = quantize(w, bits=bits, group_size=64, sym=sym, scale_dtype=scale_dtype)
                    same_quantized(got, want, where)


def test_same_input_gives_same_bytes(hf_checkpoint, tmp_path):
    source = hf_checkpoint("mixtral")
    write_store(source, tmp_path / "a", bits=BITS_MAP, progress=False)
    write_store(source, tmp_path / "b", bits=BITS_MAP, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert {"manifest.json", "dense.safetensors", "config.json"} <= {str(p) for p in files}
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_read_experts_feed_the_fused_moe_op(hf_checkpoint, tmp_path):
    source = hf_checkpoint("qwen3_moe")
    write_store(source, tmp_path, bits={"1.0": 2, "1.1": 8, "1.2": 16, "default": 4}, progress=False)
    tensors = load_file(source / "model.safetensors")
    with ExpertStore(tmp_path) as store:
        table = ExpertTable([store.read(1, e).projections for e in range(4)])
    oracle = []
    for e, bits in enumerate([2, 8, 16, 4]):
        ws = [hf_tensor(tensors, 1, e, p) for p in ("gate", "up", "down")]
        oracle.append([w.to(torch.bfloat16) if bits == 16 else quantize(w, bits=bits) for w in ws])
    torch.manual_seed(1)
    x = torch.randn(7, 64)  # [T, H]
    ids = torch.randint(0, 4, (7, 2), dtype=torch.int32)  # [T, K]
    weights = torch.rand(7, 2)
    assert torch.equal(moe_experts(x, ids, weights, table), moe_experts(x, ids, weights, ExpertTable(oracle)))


def test_dense_weights_and_files_come_along(hf_checkpoint, tmp_path):
    source = hf_checkpoint("qwen2_moe")
    write_store(source, tmp_path, bits=4, progress=False)
    tensors = load_file(source / "model.safetensors")
    with ExpertStore(tmp_path) as store:
        dense = store.dense_weights()
        assert store.config["model_type"] == "qwen2_moe"
        assert store.manifest.architecture == "qwen2_moe"
    expected = {name for name in tensors if ".experts." not in name}
    assert set(dense) == expected
    assert any(".shared_expert." in name for name in dense)  # shared experts are dense weights
    for name in expected:
        assert torch.equal(dense[name], tensors[name]), name
    assert (tmp_path / "config.json").read_bytes() == (source / "config.json").read_bytes()


def test_sharded_checkpoint_reads_only_its_indexed_shards(hf_checkpoint, tmp_path):
    source = hf_checkpoint("qwen3_moe")
    sharded = tmp_path / "sharded"
    transformers.AutoModelForCausalLM.from_pretrained(source).save_pretrained(sharded, max_shard_size="100KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    # A stray file in another naming, as Mistral repos ship beside their HF shards.
    save_file(
        {"layers.0.feed_forward.experts.0.w1.weight": torch.zeros(2, 2)}, sharded / "consolidated.safetensors"
    )
    write_store(source, tmp_path / "a", bits=BITS_MAP, progress=False)
    write_store(sharded, tmp_path / "b", bits=BITS_MAP, progress=False)
    for layer in range(2):
        name = f"experts/layer_{layer:04d}.bin"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with ExpertStore(tmp_path / "a") as a, ExpertStore(tmp_path / "b") as b:
        assert a.manifest.extents == b.manifest.extents
        dense_a, dense_b = a.dense_weights(), b.dense_weights()
        assert set(dense_a) == set(dense_b) and all(torch.equal(dense_a[k], dense_b[k]) for k in dense_a)
