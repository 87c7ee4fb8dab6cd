"""The ``moeweave`` command line. Its commands report an ordinary mistake (a missing file, an
argument out of range, a malformed checkpoint or bits map), Ctrl-C and a closed output pipe in
one line on stderr and a non-zero exit status, all in `main`; any other exception is a bug and
keeps its traceback."""

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like the commands' own errors (argparse would print the usage first);
        # subcommand parsers are made of this class too, so `self.prog` names the command.
        self.exit(2, f"{self.prog}: {message}\n")


def _info(args) -> None:
    from moeweave import info as info_module

    report = info_module.gather()
    print(json.dumps(report, indent=2) if args.json else info_module.format_report(report))


def _demo(args) -> None:
    from moeweave import demo

    demo.main()


def _group_size(text: str) -> int:
    """--group-size, checked before the conversion creates its output directory."""
    from moeweave.quant.format import UNIT_COLS

    if not text.isdecimal() or int(text) == 0 or int(text) % UNIT_COLS:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of {UNIT_COLS}, got {text!r}")
    return int(text)


def _convert(args) -> None:
    from moeweave.engine.convert import convert

    convert(
        Path(args.hf_dir), Path(args.out_dir), bits=args.bits, tolerance=args.tolerance,
        calib=None if args.calib is None else Path(args.calib), low_bits=args.low_bits, high_bits=args.high_bits,
        bits_map_file=args.bits_map, group_size=args.group_size, fallback_bits=args.fallback_bits,
    )  # fmt: skip


def _adapters_synth(args) -> None:
    from moeweave.adapters.synth import synth_command
    from moeweave.models.bundled import DEMO_MODEL_DIR

    base = DEMO_MODEL_DIR if args.base is None else Path(args.base)
    synth_command(
        Path(args.out), base, None if args.config is None else Path(args.config), args.fraction, args.seed
    )


def _parser() -> argparse.ArgumentParser:
    from moeweave import run as run_module
    from moeweave.engine.convert import BITS_CHOICES

    parser = _Parser(prog="moeweave", description="Mixture-of-Experts models and their weights")
    commands = parser.add_subparsers(required=True)

    def add(name: str, handler, summary: str, subcommands=commands) -> argparse.ArgumentParser:
        sub = subcommands.add_parser(name, help=summary)
        sub.set_defaults(handler=handler, command=sub.prog)
        return sub

    info = add("info", _info, "version, native modules, CPU ISA, threads, CUDA, io_uring")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    add("demo", _demo, "run the native ops against their plain-torch twins")
    run_module.add_arguments(add("run", run_module.main, "generate text with an MoE checkpoint"))
    convert = add("convert", _convert, "convert a Hugging Face safetensors checkpoint into an expert store")
    convert.add_argument("hf_dir", help="checkpoint directory (config.json + *.safetensors)")
    convert.add_argument("out_dir", help="new or empty directory for the store")
    convert.add_argument("--bits", default="4", choices=BITS_CHOICES,
                         help="expert bits: 2, 3, 4, 8, bf16, or auto (EdgeMoE's per-expert search)")  # fmt: skip
    convert.add_argument("--bits-map", help='JSON file {"layer.expert": bits}; experts it omits get --bits')
    convert.add_argument(
        "--group-size", type=_group_size, default=64, help="columns per scale (multiple of 32)"
    )
    convert.add_argument("--tolerance", type=float, default=0.02,
                         help="auto: calibration perplexity may grow by this fraction (default 0.02)")  # fmt: skip
    convert.add_argument(
        "--calib", help="calibration text file (default for the bundled model: its held-out text)"
    )
    convert.add_argument("--low-bits", type=int, default=2, choices=(2, 3), help="auto: the lower width")
    convert.add_argument("--high-bits", type=int, default=4, choices=(4, 8), help="auto: the higher width")
    convert.add_argument("--fallback-bits", type=int, choices=(2, 3),
                         help="also write a copy of the experts at these bits, for `run --low-bit-fallback`")  # fmt: skip
    from moeweave.serve import server

    server.add_arguments(
        add("serve", server.serve, "serve a base and its ESFT adapters over an OpenAI-compatible API")
    )
    adapters = add("adapters", None, "ESFT adapters (expert-specialised fine-tunes of an MoE base)")
    adapter_commands = adapters.add_subparsers(required=True)
    synth = add("synth", _adapters_synth, "write a synthetic ESFT adapter: perturbed copies of chosen experts",
                adapter_commands)  # fmt: skip
    synth.add_argument("out", help="new or empty directory for the adapter")
    synth.add_argument("--base", help="the base checkpoint directory (default: the bundled model)")
    chosen = synth.add_mutually_exclusive_group()
    chosen.add_argument("--config", help="an ESFT expert_cfg.json choosing the experts")
    chosen.add_argument("--fraction", type=float, default=0.07,
                        help="else this fraction of each MoE layer's experts, drawn at random (default 0.07)")  # fmt: skip
    synth.add_argument("--seed", type=int, default=0)
    from moeweave.train import esft_cli

    esft_commands = add(
        "esft", None, "expert-specialised fine-tuning: score, select, train, export"
    ).add_subparsers(required=True)
    esft_cli.add_arguments(add, esft_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command in `argv` (default: sys.argv); returns the exit status."""
    # Before torch is imported: torch's OpenMP workers otherwise spin after each parallel region
    # on the cores moeweave's pool is about to use (a 128-token prefill of the benchmark
    # checkpoint: 97 ms with spinning workers, 77-80 ms without). An explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from moeweave.cpu import keep_freed_memory

    keep_freed_memory()
    command = "moeweave"  # until the arguments are parsed: Ctrl-C can come during the imports
    try:
        args = _parser().parse_args(argv)
        command = args.command
        args.handler(args)
        # Here rather than at exit, so that a reader who has gone away raises where it is handled.
        sys.stdout.flush()
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # The reader has gone (`moeweave info | head -1`), which is no error to report. Text
        # still buffered would fail again when the interpreter flushes stdout on its way out
        # ("Exception ignored ... BrokenPipeError"), so stdout now leads nowhere. The status is
        # the one the shell reports for a command that SIGPIPE ended.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (OSError, ValueError) as error:
        # How the library reports what the user can fix: a file missing or unreadable, a value
        # out of range, a malformed checkpoint or map. Other exceptions are bugs: traceback.
        print(f"{command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
