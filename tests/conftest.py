"""Shared fixtures: the ISA levels this CPU supports, so CPU kernel tests run under each; a way
to start a command that Ctrl-C can interrupt; the io backends; tiny random checkpoints of every
supported architecture, written offline with transformers' own save_pretrained (the models under
test and, loaded back by transformers, the oracle)."""

import functools
import json
import signal
import subprocess

import pytest
import torch
import transformers

import moeweave.cpu


def pytest_generate_tests(metafunc):
    if "isa" in metafunc.fixturenames:
        metafunc.parametrize("isa", moeweave.cpu.supported_isas(), indirect=True)


@pytest.fixture
def isa(request):
    """Run the test with the CPU kernels dispatched to one ISA level."""
    with moeweave.cpu.use_isa(request.param):
        yield request.param


def _sigint_default() -> None:
    """In the child before it runs: a shell that started the tests in the background (as CI
    may) leaves SIGINT ignored, and Python keeps an inherited SIG_IGN instead of raising
    KeyboardInterrupt, so the command under test would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def interruptible_popen():
    """subprocess.Popen(argv, **kwargs) with text stdout and stderr pipes and SIGINT at its
    default in the child."""
    return functools.partial(
        subprocess.Popen,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,
    )


def _uring_works() -> bool:
    from moeweave import _native

    return _native.require_cpu_module().io_uring_status()[0]


@pytest.fixture(params=["uring", "pread"])
def backend(request) -> str:
    """Each io backend of the expert store; io_uring is skipped where the kernel refuses it."""
    if request.param == "uring" and not _uring_works():
        pytest.skip("io_uring is refused here")
    return request.param


@pytest.fixture
def uring_works() -> bool:
    """Whether this kernel lets the process use io_uring (the store's default backend then)."""
    return _uring_works()


COMMON = dict(
    vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2
)
MLA = dict(
    num_key_value_heads=4,
    kv_lora_rank=32,
    q_lora_rank=48,
    qk_rope_head_dim=16,
    qk_nope_head_dim=16,
    v_head_dim=16,
)
ARCHITECTURES = {
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                  dict(head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                       intermediate_size=96, norm_topk_prob=True, mlp_only_layers=[1])),
    "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                  dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, intermediate_size=96,
                       shared_expert_intermediate_size=48)),
    "olmoe": (transformers.OlmoeConfig, transformers.OlmoeForCausalLM,
              dict(num_experts=8, num_experts_per_tok=2, intermediate_size=32, clip_qkv=8.0)),
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=32)),
    "deepseek_v2": (transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM,
                    dict(MLA, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                         intermediate_size=96, n_shared_experts=1, first_k_dense_replace=1,
                         topk_method="group_limited_greedy", n_group=4, topk_group=1, routed_scaling_factor=1.5)),
    "deepseek_v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM,
                    dict(MLA, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                         intermediate_size=96, n_shared_experts=1, first_k_dense_replace=1, n_group=4,
                         topk_group=2, routed_scaling_factor=2.5)),
    # The same with RoPE on half-split instead of interleaved pairs.
    "deepseek_v3_half_split": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM,
                               dict(MLA, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                    intermediate_size=96, n_shared_experts=1, first_k_dense_replace=1, n_group=4,
                                    topk_group=2, routed_scaling_factor=2.5, rope_interleave=False)),
}  # fmt: skip


def fixture_config(name: str, **overrides) -> transformers.PreTrainedConfig:
    """The transformers config of fixture architecture `name`, with `overrides`."""
    config_class, _, extra = ARCHITECTURES[name]
    return config_class(**{**COMMON, **extra, **overrides}, eos_token_id=1, bos_token_id=0, pad_token_id=0)


def save_random_model(model_class, config, path):
    """A random model of `config` saved with save_pretrained; weights scaled up so routing and
    attention are far from uniform (the defaults make every logit nearly equal)."""
    torch.manual_seed(0)
    model = model_class(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, 0.15)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3's balancing bias
                buffer.normal_(0, 0.05)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=sorted(ARCHITECTURES))
def checkpoint(request, tmp_path_factory):
    """(architecture, path) of a tiny random checkpoint."""
    name = request.param
    return name, save_random_model(
        ARCHITECTURES[name][1], fixture_config(name), tmp_path_factory.mktemp(name)
    )


@pytest.fixture
def tiny_config():
    """tiny_config(architecture, **overrides) -> the config.json dict transformers writes for that
    fixture architecture with `overrides`."""
    return lambda name, **overrides: json.loads(fixture_config(name, **overrides).to_json_string())


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """tiny_checkpoint(architecture, config=None, edit=None, **overrides) -> path of a random
    checkpoint: of the fixture architecture with `overrides`, or of `config` (config.json then
    holds exactly that dict); `edit(dict)` finally rewrites config.json, for forms transformers
    would normalise when saving (a legacy rope_scaling, an omitted field)."""

    def make(name: str, config: dict | None = None, edit=None, **overrides):
        config_class, model_class, _ = ARCHITECTURES[name]
        path = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
        built = fixture_config(name, **overrides) if config is None else config_class(**config)
        save_random_model(model_class, built, path)
        written = json.loads((path / "config.json").read_text())
        if config is not None:
            written = {**config, "model_type": written["model_type"]}
        if edit is not None:
            edit(written)
        (path / "config.json").write_text(json.dumps(written))
        return path

    return make
