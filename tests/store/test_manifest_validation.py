"""The manifest is checked completely and protected by a SHA-256 checksum. An edit the checksum does
not cover (the per-extent CRC covers blob bytes only: a scale dtype changed from bfloat16 to
float16 used to scale every output by ~4e6) is refused as a checksum mismatch; an edit whose
writer re-signed the manifest is refused by the field checks, each naming manifest.json, the
layer and expert, and the field. The checksum is recomputed here with hashlib from the rule in
docs/formats.md, not with the library's code.

Stores: Qwen3-MoE (H 64, I 48, 2 layers of 4 experts), asymmetric 4-bit with expert 0.0 in bf16;
GPT-OSS (same sizes, with expert biases) at 16 bits.
"""

import hashlib
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from moeweave.quant import quantize
from moeweave.store import ExpertStore, StoreError, write_store
from moeweave.store.manifest import UNSIGNED, sign

QWEN_BITS = {"0.0": 16, "default": 4}


@pytest.fixture(scope="module")
def written(hf_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("manifests")
    write_store(hf_checkpoint("qwen3_moe"), root / "qwen3_moe", bits=QWEN_BITS, sym=False, progress=False)
    write_store(hf_checkpoint("gpt_oss"), root / "gpt_oss", bits=16, progress=False)
    return root


@pytest.fixture
def qwen(written, tmp_path):
    return shutil.copytree(written / "qwen3_moe", tmp_path / "store")


@pytest.fixture
def gpt_oss(written, tmp_path):
    return shutil.copytree(written / "gpt_oss", tmp_path / "store")


def refused(store_dir, message):
    """Opening store_dir raises StoreError saying exactly `message` about its manifest."""
    with pytest.raises(
        StoreError, match=f"^{re.escape(str(store_dir / 'manifest.json'))}: {re.escape(message)}$"
    ):
        ExpertStore(store_dir)


def at(manifest, path):
    for key in path:
        manifest = manifest[key]
    return manifest


def test_checksum_is_sha256_of_the_file_with_its_digest_zeroed(qwen):
    text = (qwen / "manifest.json").read_text()
    checksum = json.loads(text)["checksum"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", checksum)
    blanked = text.replace(checksum, "sha256:" + "0" * 64)
    assert checksum == "sha256:" + hashlib.sha256(blanked.encode()).hexdigest()


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: at(m, ("experts", 1, "projections", "gate")).update(scale_dtype="float16"),
        lambda m: at(m, ("experts", 1, "projections")).update(gate=m["experts"][1]["projections"]["up"]),
        lambda m: m["config"].update(rms_norm_eps=0.1),
    ],
    ids=["scale_dtype", "projection", "config"],
)
def test_unsigned_edits_fail_the_checksum(qwen, edit, edit_manifest):
    edit_manifest(qwen, edit, resign=False)
    with pytest.raises(StoreError, match=r"manifest.json: checksum mismatch \(the file's SHA-256 is sha256:"):
        ExpertStore(qwen)


def test_whitespace_counts_and_a_resigned_manifest_opens(qwen, edit_manifest):
    path = qwen / "manifest.json"
    path.write_text(path.read_text() + "\n")
    with pytest.raises(StoreError, match=r"checksum mismatch"):
        ExpertStore(qwen)
    edit_manifest(qwen, lambda m: None)  # the same content, re-signed: valid again
    with ExpertStore(qwen) as store:
        store.read(0, 1)


def test_checksum_required_from_version_1_1_and_optional_before(qwen, edit_manifest):
    edit_manifest(qwen, lambda m: m.pop("checksum"), resign=False)
    refused(qwen, "checksum is missing; manifests of version 1.1 carry one")
    # A 1.0 store predates the checksum: still read, every field still checked.
    edit_manifest(qwen, lambda m: m["version"].update(minor=0), resign=False)
    with ExpertStore(qwen) as store:
        assert store.manifest.version == (1, 0)
        store.read(1, 3)
    edit_manifest(qwen, lambda m: m["experts"][1].update(layer=-1), resign=False)
    refused(qwen, "experts[1]: layer is -1, expected an integer >= 0")


@pytest.mark.parametrize("checksum", ["sha256:" + "A" * 64, "md5:abc", 7, None])
def test_malformed_checksum_is_refused(qwen, checksum, edit_manifest):
    edit_manifest(qwen, lambda m: m.update(checksum=checksum), resign=False)
    if checksum is None:
        refused(qwen, "checksum is missing; manifests of version 1.1 carry one")
    else:
        refused(qwen, f"checksum is {checksum!r}, expected 'sha256:' and 64 lowercase hex digits")


def test_checksum_value_must_appear_once(qwen, edit_manifest):
    checksum = json.loads((qwen / "manifest.json").read_text())["checksum"]
    edit_manifest(qwen, lambda m: m["config"].update(note=checksum), resign=False)
    refused(qwen, "checksum mismatch: its value must appear exactly once, verbatim, in the file")


def test_scale_dtype_resized_is_refused_by_its_part_length(hf_checkpoint, qwen, edit_manifest):
    # Re-signed, the float32 scales the manifest now claims are twice the bytes it locates.
    w = load_file(hf_checkpoint("qwen3_moe") / "model.safetensors")[
        "model.layers.0.mlp.experts.1.gate_proj.weight"
    ]
    bf16, fp32 = (
        quantize(w, 4, 64, sym=False, scale_dtype=d).scales.nbytes for d in (torch.bfloat16, torch.float32)
    )
    edit_manifest(qwen, lambda m: at(m, ("experts", 1, "projections", "gate")).update(scale_dtype="float32"))
    refused(
        qwen,
        f"layer 0 expert 1: projections.gate.parts.scales.length is {bf16}, expected {fp32} "
        "(what its shape, bits, group size and dtype take)",
    )


GATE = ("experts", 1, "projections", "gate")  # layer 0 expert 1, 4-bit asymmetric [48, 64]
DELETE = object()
# (where, key, new value or f(old value), message with {old}/{new}); the store is re-signed.
FIELD_CASES = {
    "scale_dtype unknown": (GATE, "scale_dtype", "float64",
        "layer 0 expert 1: projections.gate.scale_dtype is 'float64', expected one of float32, float16, bfloat16"),
    "layer a string": (("experts", 1), "layer", "0", "experts[1]: layer is '0', expected an integer"),
    "layer a float": (("experts", 1), "layer", 0.0, "experts[1]: layer is 0.0, expected an integer"),
    "expert a bool": (("experts", 1), "expert", True, "experts[1]: expert is True, expected an integer"),
    "layer negative": (("experts", 1), "layer", -1, "experts[1]: layer is -1, expected an integer >= 0"),
    "layer beyond the config": (("experts", 1), "layer", 2,
        "layer 2 expert 1: layer is 2, but the config has num_hidden_layers 2"),
    "expert beyond the config": (("experts", 1), "expert", 4,
        "layer 0 expert 4: expert is 4, but the config has 4 experts"),
    "file index": (("experts", 1), "file", 2, "layer 0 expert 1: file is 2, but files has 2 entries"),
    "offset a float": (("experts", 1), "offset", float,
        "layer 0 expert 1: offset is {new}, expected an integer"),
    "length zero": (("experts", 1), "length", 0,
        "layer 0 expert 1: length is 0, expected an integer >= 4096, a multiple of 4096"),
    "crc32c too wide": (("experts", 1), "crc32c", 1 << 32, f"layer 0 expert 1: crc32c is {1 << 32}, more than 32 bits"),
    "crc32c missing": (("experts", 1), "crc32c", DELETE, "layer 0 expert 1: crc32c is missing"),
    "bits a string": (GATE, "bits", "4", "layer 0 expert 1: projections.gate.bits is '4', expected an integer"),
    "bits a bool": (GATE, "bits", True, "layer 0 expert 1: projections.gate.bits is True, expected an integer"),
    "bits unsupported": (GATE, "bits", 5, "layer 0 expert 1: projections.gate.bits is 5, expected one of 2, 3, 4, 8"),
    "bits of another width": (GATE, "bits", 8,
        "layer 0 expert 1: projections.gate.parts.packed.length is 1536, expected 3072 "
        "(what its shape, bits, group size and dtype take)"),
    "group_size 48": (GATE, "group_size", 48,
        "layer 0 expert 1: projections.gate.group_size is 48, expected an integer >= 32, a multiple of 32"),
    "group_size 0": (GATE, "group_size", 0,
        "layer 0 expert 1: projections.gate.group_size is 0, expected an integer >= 32, a multiple of 32"),
    "sym not a bool": (GATE, "sym", 0, "layer 0 expert 1: projections.gate.sym is 0, expected true or false"),
    "sym with zeros": (GATE, "sym", True,
        "layer 0 expert 1: projections.gate.parts are ['packed', 'scales', 'zeros'], expected ['packed', 'scales']"),
    "format unknown": (GATE, "format", "gguf",
        "layer 0 expert 1: projections.gate.format is 'gguf', expected one of quant, bf16"),
    "shape swapped": (GATE, "shape", [64, 48],
        "layer 0 expert 1: projections.gate.shape is [64, 48], expected [48, 64] "
        "(gate and up [I, H], down [H, I] by the config)"),
    "shape of floats": (GATE, "shape", [48.0, 64.0],
        "layer 0 expert 1: projections.gate.shape is [48.0, 64.0], expected [48, 64] "
        "(gate and up [I, H], down [H, I] by the config)"),
    "shape 3-D": (GATE, "shape", [48, 64, 1],
        "layer 0 expert 1: projections.gate.shape is [48, 64, 1], expected [48, 64] "
        "(gate and up [I, H], down [H, I] by the config)"),
    "down shape swapped": (("experts", 1, "projections", "down"), "shape", [48, 64],
        "layer 0 expert 1: projections.down.shape is [48, 64], expected [64, 48] "
        "(gate and up [I, H], down [H, I] by the config)"),
    "part length": ((*GATE, "parts", "packed"), "length", lambda old: old + 64,
        "layer 0 expert 1: projections.gate.parts.packed.length is {new}, expected {old} "
        "(what its shape, bits, group size and dtype take)"),
    "part misaligned": ((*GATE, "parts", "scales"), "offset", lambda old: old + 2,
        "layer 0 expert 1: projections.gate.parts.scales.offset is {new}, expected an integer >= 0, a multiple of 64"),
    "parts overlapping": ((*GATE, "parts", "scales"), "offset", 0,
        "layer 0 expert 1: projections.gate.parts.scales at offset 0 overlaps projections.gate.parts.packed, "
        "which ends at 1536"),
    "part outside": ((*GATE, "parts", "zeros"), "offset", 8192 - 64,
        "layer 0 expert 1: projections.gate.parts.zeros is bytes [8128, 8224), outside the 8192-byte extent"),
    "projection missing": (("experts", 1, "projections"), "up", DELETE,
        "layer 0 expert 1: projections are ['down', 'gate'], expected ['gate', 'up', 'down']"),
    "projection not an object": (("experts", 1, "projections"), "gate", "x",
        "layer 0 expert 1: projections.gate is 'x', expected an object"),
    "bf16 with bits": (("experts", 0, "projections", "up"), "bits", 4,
        "layer 0 expert 0: projections.up.bits is 4, expected one of 16"),
    "extent not an object": (("experts",), 1, [], "experts[1] is [], expected an object"),
    "experts empty": ((), "experts", [], "experts is empty"),
    "files not strings": (("files",), 0, 3, "files[0] is 3, expected a string"),
    "alignment": ((), "alignment", 512, "alignment is 512, expected one of 4096"),
    "architecture unknown": ((), "architecture", "llama",
        "architecture is 'llama', expected one of mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, gpt_oss"),
    "architecture not the config's": ((), "architecture", "mixtral",
        "config model_type is 'qwen3_moe', but architecture is 'mixtral'"),
    "config lacks the expert size": (("config",), "moe_intermediate_size", DELETE,
        "config moe_intermediate_size is None, expected a positive integer"),
    "config with another expert size": (("config",), "moe_intermediate_size", 32,
        "layer 0 expert 0: projections.gate.shape is [48, 64], expected [32, 64] "
        "(gate and up [I, H], down [H, I] by the config)"),
    "dense_file not a string": ((), "dense_file", None, "dense_file is None, expected a string"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FIELD_CASES))
def test_bad_fields_are_refused_by_name(qwen, case, edit_manifest):
    where, key, value, message = FIELD_CASES[case]
    seen = {}

    def change(manifest):
        target = at(manifest, where)
        seen["old"] = target[key]
        if value is DELETE:
            del target[key]
        else:
            target[key] = value(seen["old"]) if callable(value) else value
        seen["new"] = target.get(key) if isinstance(target, dict) else target[key]

    edit_manifest(qwen, change)
    refused(qwen, message.format(**seen))


def test_an_expert_listed_twice_is_refused(qwen, edit_manifest):
    edit_manifest(qwen, lambda m: m["experts"].append(m["experts"][5]))
    refused(qwen, "layer 1 expert 1: listed twice")


def test_overlapping_extents_are_refused(qwen, edit_manifest):
    def overlap(manifest):  # expert 0.2 starts inside 0.1 (and 0.1 is no longer where it was)
        manifest["experts"][2]["offset"] = manifest["experts"][1]["offset"] + 4096

    edit_manifest(qwen, overlap)
    manifest = json.loads((qwen / "manifest.json").read_text())
    first, second = manifest["experts"][1], manifest["experts"][2]
    refused(
        qwen,
        f"layer 0 expert 2: extent at offset {second['offset']} of files[0] overlaps layer 0 expert 1's, "
        f"which ends at {first['offset'] + first['length']}",
    )


def test_duplicate_json_keys_and_constants_are_refused(qwen):
    path = qwen / "manifest.json"
    text = path.read_text()
    checksum = json.loads(text)["checksum"]
    # json.loads keeps the last of two equal keys, another parser the first: ambiguous.
    doubled = text.replace('"layer": 1,', '"layer": 0, "layer": 1,', 1).replace(checksum, UNSIGNED)
    path.write_text(sign(doubled))
    with pytest.raises(
        StoreError, match=r"manifest.json: not valid JSON \(key 'layer' appears twice in one object\)"
    ):
        ExpertStore(qwen)
    path.write_text(
        sign(text.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": NaN').replace(checksum, UNSIGNED))
    )
    with pytest.raises(StoreError, match=r"manifest.json: not valid JSON \(NaN is not JSON\)"):
        ExpertStore(qwen)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("shape", [63], "layer 0 expert 1: biases.down.shape is [63], expected [64] by the config"),
        ("dtype", "float64",
         "layer 0 expert 1: biases.down.dtype is 'float64', expected one of float32, float16, bfloat16"),
        ("dtype", "bfloat16",
         "layer 0 expert 1: biases.down.part.length is 256, expected 128 (what its shape, bits, group size and "
         "dtype take)"),
    ],
)  # fmt: skip
def test_bad_biases_are_refused(gpt_oss, key, value, message, edit_manifest):
    edit_manifest(gpt_oss, lambda m: m["experts"][1]["biases"]["down"].update({key: value}))
    refused(gpt_oss, message)


def test_unknown_bias_is_refused(gpt_oss, edit_manifest):
    edit_manifest(gpt_oss, lambda m: m["experts"][1]["biases"].update(router=m["experts"][1]["biases"]["up"]))
    refused(
        gpt_oss,
        "layer 0 expert 1: biases are ['down', 'gate', 'router', 'up'], expected some of ['gate', 'up', 'down']",
    )
