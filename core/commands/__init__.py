"""One module per `python -m core` subcommand, each with add_arguments(parser) and run(args) -> int."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_with_default"]


def add_with_default(parser: argparse.ArgumentParser, flag: str, default: Any, text: str, **options: Any) -> None:
    """An option whose help ends with its default in brackets, e.g. "random seed [0]" (one style for every command)."""
    shown = f"{default:g}" if isinstance(default, float) else default
    parser.add_argument(flag, default=default, help=f"{text} [{shown}]", **options)
