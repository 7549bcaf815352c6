"""`python -m core demo`: write the synthetic demo data set (MVTec AD layout)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.commands import add_with_default
from core.errors import UserError

HELP = "write the synthetic demo data set (MVTec layout)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from core.demo.build import DemoConfig

    defaults = DemoConfig()
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must be new or empty)")
    add_with_default(parser, "--seed", defaults.seed, "random seed", type=int)
    add_with_default(parser, "--size", defaults.image_size, "image side in pixels", type=int)
    add_with_default(parser, "--per-class", defaults.n_per_class, "defective images per defect type", type=int)
    add_with_default(parser, "--train-good", defaults.n_train_good, "defect-free reference images in train/good",
                     type=int)
    add_with_default(parser, "--test-good", defaults.n_test_good, "defect-free images in test/good", type=int)
    add_with_default(parser, "--two-defect-share", defaults.two_defect_share,
                     "share of defective images with a second defect", type=float)
    parser.add_argument("--overwrite", action="store_true", help="replace a previous demo set in --out")
    parser.add_argument("--hard", action="store_true",
                        help="the hard detection set instead: textured tiles of several sizes under uneven light, "
                             "subtle defects (core/demo/hard.py); --size is then the largest shorter side")


def _configure(make: Callable[..., Any], **values: Any) -> Any:
    """A generator's settings from the arguments; a bad value becomes a one-line UserError."""
    try:
        return make(**values)
    except ValueError as error:
        raise UserError(str(error)) from error


def _generate(generate: Callable[..., Path], args: argparse.Namespace, config: Any) -> tuple[Path, float]:
    """Write the set; (root, seconds). A folder that must not be overwritten becomes a UserError."""
    start = time.perf_counter()
    try:
        return generate(args.out, config, overwrite=args.overwrite), time.perf_counter() - start
    except (FileExistsError, OSError) as error:
        raise UserError(str(error)) from error


def run(args: argparse.Namespace) -> int:
    from core.demo.build import DemoConfig, generate_demo

    if args.hard:
        from core.demo.hard import HardDemoConfig, generate_hard_demo

        hard = _configure(HardDemoConfig, seed=args.seed, min_side=max(48, min(128, args.size // 2)),
                          max_side=args.size, n_train_good=args.train_good, n_test_good=args.test_good,
                          n_per_class=args.per_class)
        root, seconds = _generate(generate_hard_demo, args, hard)
        print(f"wrote the hard detection set to {root} in {seconds:.1f} s: {hard.n_train_good} train/good, "
              f"{hard.n_test_good} test/good, {hard.n_per_class} per defect type ({', '.join(hard.defect_types)}), "
              f"shorter sides {hard.min_side}-{hard.max_side} px, seed {hard.seed}")
        return 0
    config = _configure(DemoConfig, seed=args.seed, image_size=args.size, n_train_good=args.train_good,
                        n_test_good=args.test_good, n_per_class=args.per_class,
                        two_defect_share=args.two_defect_share)
    root, seconds = _generate(generate_demo, args, config)
    n_defective = config.n_per_class * len(config.defect_types)
    print(f"wrote the demo data set to {root} in {seconds:.1f} s: "
          f"{config.n_train_good} train/good, {config.n_test_good} test/good, {n_defective} defective "
          f"({', '.join(config.defect_types)}), {config.image_size} px, seed {config.seed}")
    return 0
