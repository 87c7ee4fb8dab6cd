"""The ``moeweave`` command line."""

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="moeweave", description="Mixture-of-Experts models and their weights"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="version, native modules, CPU ISA, threads, CUDA, io_uring")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    commands.add_parser("demo", help="run the native ops against their plain-torch twins")
    from moeweave import run as run_module

    run_module.add_arguments(commands.add_parser("run", help="generate text with an MoE checkpoint"))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
