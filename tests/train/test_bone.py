"""Bone / MiSS adapters (moeweave.train.bone, moeweave::bone_bat_linear): forward and backward
against the installed peft's MissLayer for every mode, odd shapes, fp32 and bf16; adapters saved in
PEFT's format loaded by peft.PeftModel and PEFT's loaded by us; merge then unmerge recovers W;
gradcheck of the op and the twins in float64; torch.compile(fullgraph=True); fused transformers
experts against per-expert W' written out; clear errors."""

import copy

import peft
import pytest
import torch
from tiny_moe import tiny_moe, token_batch

from moeweave.ops import reference
from moeweave.ops.bone import bone_bat_linear
from moeweave.train import bone

PEFT_INIT = {"bat": "bat", "default": True, "mini": "mini"}
# (in, out, r, mini_r): bat needs in, out divisible by r; default pads in % r; mini needs out % mini_r.
SHAPES = {
    "bat": [(48, 80, 16, 1), (64, 32, 8, 1), (7, 7, 7, 1)],
    "default": [(50, 37, 16, 1), (19, 111, 4, 1), (64, 1, 8, 1)],
    "mini": [(45, 36, 8, 6), (50, 37, 16, 37), (19, 7, 4, 1)],
}
CASES = [(mode, *shape) for mode, shapes in SHAPES.items() for shape in shapes]
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=3e-2)}


class TwoLinears(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int, dtype=torch.float32):
        super().__init__()
        self.q_proj = torch.nn.Linear(in_features, out_features, dtype=dtype)
        self.v_proj = torch.nn.Linear(in_features, out_features, bias=False, dtype=dtype)

    def forward(self, x):
        return self.q_proj(x) * 2 + self.v_proj(x)


def _pair(mode, in_features, out_features, r, mini_r, dtype=torch.float32, seed=0):
    """(ours, PEFT's) over the same base, with the same random blocks."""
    torch.manual_seed(seed)
    base = TwoLinears(in_features, out_features, dtype)
    ours = copy.deepcopy(base)
    bone.apply(ours, r=r, mode=mode, target_modules=["q_proj", "v_proj"], mini_r=mini_r)
    config = peft.MissConfig(
        r=r, init_weights=PEFT_INIT[mode], mini_r=mini_r, target_modules=["q_proj", "v_proj"]
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name in ("q_proj", "v_proj"):
            ours_block = getattr(ours, name).miss_block
            ours_block.normal_(0, 0.2)
            theirs.base_model.model.get_submodule(name).miss_block["default"].copy_(ours_block)
    return base, ours, theirs


def _peft_blocks(theirs):
    return [theirs.base_model.model.get_submodule(n).miss_block["default"] for n in ("q_proj", "v_proj")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("mode", "in_features", "out_features", "r", "mini_r"), CASES)
def test_forward_and_backward_match_peft(mode, in_features, out_features, r, mini_r, dtype):
    _, ours, theirs = _pair(mode, in_features, out_features, r, mini_r, dtype)
    x = torch.randn(3, 5, in_features, dtype=dtype)
    dy = torch.randn(3, 5, out_features, dtype=dtype)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    torch.testing.assert_close(y_ours, y_theirs, **TOLERANCE[dtype])
    (y_ours * dy).sum().backward()
    (y_theirs * dy).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOLERANCE[dtype])
    ours_blocks = [ours.q_proj.miss_block, ours.v_proj.miss_block]
    for mine, peft_block in zip(ours_blocks, _peft_blocks(theirs), strict=True):
        scale = float(peft_block.grad.abs().max()) + 1
        torch.testing.assert_close(
            mine.grad,
            peft_block.grad,
            rtol=TOLERANCE[dtype]["rtol"],
            atol=TOLERANCE[dtype]["atol"] * scale,
            check_dtype=False,  # PEFT's bf16 bat on CPU leaves an fp32 gradient
        )
    assert not any(p.requires_grad for n, p in ours.named_parameters() if "miss_block" not in n)


@pytest.mark.parametrize("mode", bone.MODES)
def test_adapters_move_between_peft_and_us(mode, tmp_path):
    in_features, out_features, r, mini_r = SHAPES[mode][0]
    base, ours, theirs = _pair(mode, in_features, out_features, r, mini_r)
    x = torch.randn(4, in_features)
    bone.save_adapter(ours, tmp_path / "ours")
    loaded_by_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    loaded_by_us = copy.deepcopy(base)
    bone.load_adapter(loaded_by_us, tmp_path / "theirs")
    with torch.no_grad():
        torch.testing.assert_close(loaded_by_peft(x), theirs(x), rtol=0, atol=0)  # the same blocks
        torch.testing.assert_close(loaded_by_us(x), theirs(x), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("mode", bone.MODES)
def test_merge_then_unmerge_recovers_the_weights(mode):
    in_features, out_features, r, mini_r = SHAPES[mode][0]
    base, ours, theirs = _pair(mode, in_features, out_features, r, mini_r)
    x = torch.randn(4, in_features)
    with torch.no_grad():
        adapted = ours(x)
        bone.merge(ours)
        torch.testing.assert_close(ours(x), adapted, rtol=1e-5, atol=1e-5)
        theirs.merge_adapter()  # PEFT's merged weights are the oracle
        torch.testing.assert_close(
            ours.q_proj.base_layer.weight,
            theirs.base_model.model.q_proj.base_layer.weight,
            rtol=1e-6,
            atol=1e-6,
        )
        bone.unmerge(ours)
    # bat unmerges through (I + B_i)^-1 in fp32: W back within 1e-5 for blocks of norm ~ 0.2 r^0.5.
    torch.testing.assert_close(ours.q_proj.base_layer.weight, base.q_proj.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.v_proj.base_layer.weight, base.v_proj.weight, rtol=1e-5, atol=1e-5)


def test_op_and_twins_pass_gradcheck_in_float64():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, 12, dtype=torch.float64)
    bias = torch.randn(8, dtype=torch.float64)
    block = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: bone_bat_linear(x, weight, b, bias), (x, block))
    assert torch.autograd.gradcheck(lambda x, b: reference.bone_linear(x, weight, bias, b, "bat"), (x, block))
    default_block = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, b: reference.bone_linear(x, weight, bias, b, "default"), (x, default_block)
    )


def test_bat_op_forms_panels_without_changing_the_result(monkeypatch):
    """Several panels (a tiny PANEL_BYTES) give the twin's output and gradients."""
    monkeypatch.setattr("moeweave.ops.bone.PANEL_BYTES", 4 * 32 * 8)
    torch.manual_seed(2)
    x = torch.randn(7, 32, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 32, dtype=torch.float64)
    block = torch.randn(5, 8, 8, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(7, 40, dtype=torch.float64)
    ours = torch.autograd.grad((bone_bat_linear(x, weight, block) * dy).sum(), (x, block))
    twin = torch.autograd.grad((reference.bone_linear(x, weight, None, block, "bat") * dy).sum(), (x, block))
    for mine, expected in zip(ours, twin, strict=True):
        torch.testing.assert_close(mine, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", bone.MODES)
def test_compiles_with_fullgraph(mode):
    in_features, out_features, r, mini_r = SHAPES[mode][0]
    _, ours, _ = _pair(mode, in_features, out_features, r, mini_r)
    x = torch.randn(4, in_features)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), ours(x))
    compiled(x).sum().backward()
    assert ours.q_proj.miss_block.grad is not None


@pytest.mark.parametrize("mode", bone.MODES)
def test_fused_experts_get_one_block_per_expert(mode, tiny_config, tmp_path):
    config = tiny_config("qwen3_moe")
    model = tiny_moe(config)
    ids = token_batch(1)
    with torch.no_grad():
        before = model(ids).logits
    names = bone.apply(
        model, r=8, mode=mode, target_modules=["experts.gate_up_proj", "experts.down_proj"], mini_r=4
    )
    assert names and all(n.endswith(("gate_up_proj", "down_proj")) for n in names)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)  # B = 0: the base
    # The oracle: a fresh base whose experts hold each expert's W' written out by the twin.
    merged = tiny_moe(config)
    with torch.no_grad():
        for name in names:
            parent, _, attr = name.rpartition(".")
            chain = model.get_submodule(parent).parametrizations[attr]
            chain[0].miss_block.normal_(0, 0.1)
            blocks = chain[0].miss_block
            if mode == "bat":
                written = torch.stack(
                    [reference.bone_bat_weight(w, b) for w, b in zip(chain.original, blocks, strict=True)]
                )
            else:
                x_eye = torch.eye(chain.original.shape[2])
                written = torch.stack([
                    reference.bone_linear(x_eye, w, None, b, mode).T for w, b in zip(chain.original, blocks, strict=True)
                ])  # fmt: skip
            merged.get_parameter(name).copy_(written)
        adapted = model(ids).logits
        torch.testing.assert_close(adapted, merged(ids).logits, rtol=1e-5, atol=1e-5)
        bone.merge(model)
        torch.testing.assert_close(model(ids).logits, adapted, rtol=1e-5, atol=1e-5)
        bone.unmerge(model)
    bone.save_adapter(model, tmp_path / "experts")
    again = tiny_moe(config)
    bone.load_adapter(again, tmp_path / "experts")
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, adapted, rtol=1e-5, atol=1e-5)


def test_a_peft_adapter_started_at_random_loads_in_default_mode(tmp_path):
    torch.manual_seed(4)
    base = TwoLinears(50, 37)
    config = peft.MissConfig(r=16, init_weights=False, target_modules=["q_proj", "v_proj"])
    theirs = peft.get_peft_model(copy.deepcopy(base), config)  # init_weights=False: random blocks
    theirs.save_pretrained(tmp_path)
    ours = copy.deepcopy(base)
    bone.load_adapter(ours, tmp_path)
    x = torch.randn(4, 50)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), **TOLERANCE[torch.float32])


def test_bad_input_is_named(tmp_path):
    with pytest.raises(
        ValueError, match=r"bat needs in and out features divisible by r = 16; q_proj is \[40, 48\]"
    ):
        bone.apply(TwoLinears(48, 40), r=16, mode="bat", target_modules=["q_proj"])
    with pytest.raises(ValueError, match="mini needs out_features % mini_r == 0; q_proj has 40, mini_r = 6"):
        bone.apply(TwoLinears(48, 40), r=16, mode="mini", mini_r=6, target_modules=["q_proj"])
    with pytest.raises(ValueError, match=r"matches \['k_proj'\]"):
        bone.apply(TwoLinears(48, 40), r=8, target_modules=["q_proj", "k_proj"])
    with pytest.raises(ValueError, match="mode must be one of"):
        bone.apply(TwoLinears(48, 40), r=8, mode="lora", target_modules=["q_proj"])
    untouched = TwoLinears(48, 40)
    with pytest.raises(ValueError):
        bone.apply(untouched, r=16, mode="bat", target_modules=["q_proj", "missing"])
    assert isinstance(untouched.q_proj, torch.nn.Linear)  # a refused call changes nothing
    model = TwoLinears(48, 40)
    bone.apply(model, r=8, mode="bat", target_modules=["q_proj"])
    bone.save_adapter(model, tmp_path / "adapter")
    with pytest.raises(
        ValueError, match=r"q_proj.miss_block is \[5, 8, 8\] but this model needs \[4, 8, 8\]"
    ):
        bone.load_adapter(TwoLinears(48, 32), tmp_path / "adapter")
