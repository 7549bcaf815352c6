"""Command line of the engine: `python -m core <subcommand>`.

Each subcommand lives in core/commands/<name>.py with `HELP`, `add_arguments(parser)` and
`run(args) -> int`; modules are imported only when their subcommand runs, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from core.errors import UserError

#: subcommand -> one-line help (kept here so `--help` needs no heavy imports)
SUBCOMMANDS = {
    "binarize": "run MEBin on a folder of anomaly maps; write masks, crops and regions.csv",
    "detect": "write anomaly maps with the built-in detector (PatchCore or zero-shot)",
    "discover": "run the whole pipeline: maps -> MEBin -> regions -> MGViT -> classes",
    "demo": "write the synthetic demo data set (MVTec layout)",
    "classify": "classify new images with a run's named classes (its model bundle); flag the unknown",
}


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Defect Discovery Studio engine")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=text, description=text)
        if name == load:
            importlib.import_module(f"core.commands.{name}").add_arguments(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(load=command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"core.commands.{args.command}")
    try:
        return int(module.run(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
