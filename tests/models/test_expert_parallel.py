"""Expert parallelism (moeweave.models.expert_parallel) against the single-process model as the
oracle: ranks holding a slice of the experts each, exchanging tokens over gloo on loopback,
give the same logits and the same greedy tokens for their own prompts, also when ranks finish at
different steps; `moeweave run --expert-parallel` under torchrun likewise."""

import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from moeweave.models import load
from moeweave.models.bundled import default_model_dir
from moeweave.models.expert_parallel import expert_slice

# (architecture, expert format, dense dtype): plain softmax routing, and DeepSeek-V3's grouped
# routing with a correction bias, a shared expert and a dense first layer.
CASES = [("mixtral", "int4", torch.bfloat16), ("deepseek_v3", "fp32", torch.float32)]


def _prompt(rank: int, vocab: int) -> list[int]:
    return torch.randint(2, vocab, (3 + rank,), generator=torch.Generator().manual_seed(rank)).tolist()


def _max_new_tokens(rank: int) -> int:
    return 3 + 2 * rank  # ranks finish at different steps: the early ones serve the rest


def _rank(rank: int, world: int, paths: list[str], init_file: str, out: str) -> None:
    # A protocol bug fails the test in two minutes instead of hanging it for gloo's default 30.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=2))  # fmt: skip
    results = []
    for path, (_, experts, dtype) in zip(paths, CASES, strict=True):
        model = load(path, experts=experts, dtype=dtype, expert_parallel=dist.group.WORLD)
        prompt = _prompt(rank, model.spec.vocab_size)
        logits = model(torch.tensor([prompt])).logits
        tokens = model.generate(prompt, max_new_tokens=_max_new_tokens(rank), stop_at_eos=False).tokens
        results.append((logits, tokens))
    provider = model.expert_parallel()
    # Ranks that disagree on the layer they are at are told, not left to mix experts of two layers.
    try:
        x = torch.zeros(1, model.spec.hidden_size)
        provider(provider.moe_layers[rank % 2], x, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2))
        results.append("no error")
    except RuntimeError as error:
        results.append(str(error))
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


def test_four_ranks_give_the_single_process_logits_and_tokens(tiny_checkpoint, tmp_path, monkeypatch):
    world = 4  # two ranks: the torchrun test below
    monkeypatch.setenv("MOEWEAVE_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    paths = [str(tiny_checkpoint(arch)) for arch, _, _ in CASES]
    out = str(tmp_path / "results")
    torch.multiprocessing.start_processes(
        _rank, args=(world, paths, str(tmp_path / "init"), out), nprocs=world, start_method="spawn"
    )
    for path, (arch, experts, dtype), case in zip(paths, CASES, range(len(CASES)), strict=True):
        single = load(path, experts=experts, dtype=dtype)
        for rank in range(world):
            logits, tokens = torch.load(f"{out}.{rank}")[case]
            prompt = _prompt(rank, single.spec.vocab_size)
            expected = single(torch.tensor([prompt])).logits
            torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
            expected_tokens = single.generate(prompt, max_new_tokens=_max_new_tokens(rank), stop_at_eos=False)
            assert tokens == expected_tokens.tokens, f"{arch} {experts}, rank {rank} of {world}"
    for rank in range(world):
        assert "every rank must run the same forwards" in torch.load(f"{out}.{rank}")[-1]


def test_torchrun_cli_ranks_continue_their_own_prompts():
    prompts = ["The history of the city", "Once upon a time"]
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as sock:  # not torchrun's fixed default port, which another job may hold
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(port), "--no-python",
            str(Path(sys.executable).with_name("moeweave")),
            "run", "--expert-parallel", "--max-new-tokens", "12", "--temperature", "0"]  # fmt: skip
    for prompt in prompts:
        argv += ["--prompt", prompt]
    env = {**os.environ, "TQDM_DISABLE": "1", "MOEWEAVE_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    model = load(default_model_dir(), experts="int4", dtype=torch.bfloat16)
    for rank, prompt in enumerate(prompts):
        expected = model.generate(prompt, max_new_tokens=12, temperature=0).text
        assert f"# rank {rank} of 2: experts" in done.stdout
        assert prompt + expected in done.stdout, done.stdout


def test_every_expert_has_exactly_one_rank():
    for experts in range(1, 20):
        for world in range(1, experts + 1):
            slices = [expert_slice(experts, rank, world) for rank in range(world)]
            assert [e for s in slices for e in s] == list(range(experts))
            assert max(map(len, slices)) - min(map(len, slices)) <= 1
    with pytest.raises(ValueError, match="3 ranks cannot split 2 experts"):
        expert_slice(2, 0, 3)


def test_a_provider_is_not_split_by_load():
    with pytest.raises(ValueError, match="an expert provider holds its own"):
        load(default_model_dir(), experts=lambda *args: None, expert_parallel=object())
