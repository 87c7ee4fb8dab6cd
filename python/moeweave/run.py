"""`moeweave run`: generate text with an MoE checkpoint (default: the bundled demo model) on
moeweave's own model execution, streaming tokens as they come, then the speed. With
--memory-budget, or for an expert store, through the on-device engine (moeweave.run_engine)."""

import sys
from pathlib import Path

import torch

from moeweave import run_engine, run_parallel
from moeweave.engine import POLICIES, PREDICTORS, is_store
from moeweave.engine.engine import dense_dtype
from moeweave.formats.hf_checkpoint import read_config
from moeweave.models import EXPERT_FORMATS, load
from moeweave.models.bundled import default_model_dir
from moeweave.models.generate import check_arguments
from moeweave.models.load import PROJECTION_FORMATS, default_projections
from moeweave.models.prompting import SAMPLING_DEFAULTS, chat_prompt, sampling_defaults

DEFAULT_PROMPT = "The history of the city"
DENSE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def checkpoint_dtype(path: Path) -> torch.dtype:
    """The dtype config.json records for the weights (moeweave.engine.engine.dense_dtype)."""
    if not (path / "config.json").is_file():  # load() reports the missing directory or file
        return torch.float32
    return dense_dtype(read_config(path))  # ValueError naming the file when it is not a JSON object


def add_arguments(parser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        type=Path,
        help="Hugging Face checkpoint directory or expert store (default: bundled demo model)",
    )
    parser.add_argument("--prompt", action="append",
                        help=f"text to continue (default: {DEFAULT_PROMPT!r}); with --expert-parallel "
                             "one per rank, cycling")  # fmt: skip
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as a user message through the tokenizer's chat template")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int,
                        help=f"default: generation_config.json's, else {SAMPLING_DEFAULTS['max_new_tokens']}")  # fmt: skip
    parser.add_argument("--experts", choices=EXPERT_FORMATS, default="int4", help="routed expert format")
    parser.add_argument("--projections", choices=PROJECTION_FORMATS,
                        help="attention / dense / LM-head projection weights: float, int8 or int4 "
                             "(default: int8 with quantised experts, else float)")  # fmt: skip
    parser.add_argument("--dtype", choices=["auto", *DENSE_DTYPES], default="auto",
                        help="dense weights: the checkpoint's own dtype (config.json), float32 or bfloat16")  # fmt: skip
    # Sampling: flags win, then the checkpoint's generation_config.json, then SAMPLING_DEFAULTS.
    parser.add_argument("--temperature", type=float, help="0 = greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int, default=0)
    # The on-device engine: with a budget, or when MODEL is an expert store.
    parser.add_argument("--memory-budget", metavar="SIZE",
                        help="hold at most SIZE of experts in RAM (e.g. 512MiB), reading the rest from an expert store")  # fmt: skip
    parser.add_argument("--predictor", choices=PREDICTORS, default="stale-gate",
                        help="how the engine guesses the next layer's experts to read ahead")  # fmt: skip
    parser.add_argument("--cache", choices=POLICIES, default="edgemoe", help="the engine's eviction policy")
    parser.add_argument("--low-bit-fallback", action="store_true",
                        help="read experts nobody prefetched from the store's low-bit copy: fewer bytes, lower quality")  # fmt: skip
    parser.add_argument(
        "--stats", action="store_true", help="print the engine's telemetry per token and in sum"
    )
    parser.add_argument("--expert-parallel", action="store_true",
                        help="under torchrun: split the routed experts across the ranks, each continuing its own prompt")  # fmt: skip


def main(args) -> None:
    """Errors are ValueError or OSError; moeweave.cli prints them in one line."""
    texts = args.prompt or [DEFAULT_PROMPT]
    for text in texts:
        try:
            text.encode()
        except UnicodeEncodeError:
            # Bytes of argv that are not UTF-8 arrive as lone surrogates, which no tokenizer encodes.
            raise ValueError("--prompt is not valid UTF-8 text") from None
    if len(texts) > 1 and not args.expert_parallel:
        raise ValueError("several --prompt are for --expert-parallel (one per rank); give one")
    path = args.model or default_model_dir()
    given = {name: getattr(args, name) for name in SAMPLING_DEFAULTS if getattr(args, name) is not None}
    sampling = {**sampling_defaults(path), **given}
    prompts = [chat_prompt(path, text) if args.chat else text for text in texts]
    for prompt in prompts:
        check_arguments(prompt, **sampling)
    engine = args.memory_budget is not None or is_store(path)
    if args.expert_parallel and args.stats:
        raise ValueError(
            "--stats is the engine's telemetry; --expert-parallel prints its exchange's costs itself"
        )
    if args.expert_parallel and engine:
        raise ValueError(
            "--expert-parallel splits the experts of a checkpoint held in RAM; it has no engine mode"
        )
    prompt = prompts[0]
    if engine:
        run_engine.run(args, path, prompt, sampling)
        return
    dtype = checkpoint_dtype(path) if args.dtype == "auto" else DENSE_DTYPES[args.dtype]
    if args.expert_parallel:
        run_parallel.run(args, path, prompts, sampling, dtype)
        return
    model = load(path, experts=args.experts, dtype=dtype, projections=args.projections)
    if model.tokenizer is None:
        raise ValueError(f"{path} has no tokenizer.json, so a text prompt cannot be encoded")
    print(
        f"# {path} ({model.spec.architecture}, {args.experts} experts, "
        f"{args.projections or default_projections(args.experts)} projections, {str(dtype).removeprefix('torch.')} "
        f"dense weights, {torch.get_num_threads()} torch threads)"
    )
    sys.stdout.write(prompt)
    sys.stdout.flush()

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = model.generate(prompt, **sampling, seed=args.seed, on_text=stream)
    prompt_tokens = len(model.tokenizer.encode(prompt).ids)
    print(
        f"\n# prompt {prompt_tokens} tokens in {result.prefill_seconds * 1e3:.0f} ms; "
        f"{len(result.tokens)} new tokens at {result.decode_tokens_per_second:.1f} tokens/s"
    )
