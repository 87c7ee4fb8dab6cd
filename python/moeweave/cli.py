"""The ``moeweave`` command line."""

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    # Before torch is imported: torch's OpenMP workers otherwise spin after each parallel region
    # on the cores moeweave's pool is about to use (a 128-token prefill of the benchmark
    # checkpoint: 97 ms with spinning workers, 77-80 ms without). An explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(
        prog="moeweave", description="Mixture-of-Experts models and their weights"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="version, native modules, CPU ISA, threads, CUDA, io_uring")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    commands.add_parser("demo", help="run the native ops against their plain-torch twins")
    from moeweave import run as run_module

    run_module.add_arguments(commands.add_parser("run", help="generate text with an MoE checkpoint"))
    store = commands.add_parser("store", help="expert stores (experts on SSD, read with O_DIRECT)")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    convert = store_commands.add_parser("convert", help="convert a Hugging Face safetensors checkpoint")
    convert.add_argument("hf_dir", help="checkpoint directory (config.json + *.safetensors)")
    convert.add_argument("out_dir", help="new or empty directory for the store")
    convert.add_argument("--bits", type=int, default=4, help="bits per weight: 2, 3, 4, 8 or 16 (bf16)")
    convert.add_argument("--bits-map", help='JSON file {"layer.expert": bits}; experts it omits get --bits')
    convert.add_argument("--group-size", type=int, default=64, help="columns per scale (multiple of 32)")
    args = parser.parse_args(argv)

    if args.command == "info":
        from moeweave import info as info_module

        report = info_module.gather()
        print(json.dumps(report, indent=2) if args.json else info_module.format_report(report))
    elif args.command == "demo":
        from moeweave import demo

        demo.main()
    elif args.command == "run":
        run_module.main(args)
    elif args.command == "store":
        from moeweave.store import write_store

        bits = args.bits
        try:
            if args.bits_map:
                bits = {"default": args.bits, **json.loads(Path(args.bits_map).read_text())}
            manifest = write_store(args.hf_dir, args.out_dir, bits=bits, group_size=args.group_size)
        except (OSError, ValueError) as error:
            print(f"moeweave store convert: {error}", file=sys.stderr)
            return 1
        print(f"{args.out_dir}: {len(manifest.extents)} experts in {len(manifest.files)} blob files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
