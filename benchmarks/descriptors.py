"""Speed of the region descriptors: 10,000 regions, one process against all usable cores.

    python benchmarks/descriptors.py [--regions 10000]

Regions are drawn like DeepPCB's: 24-90 px square crops of a textured image with a blob, line or
ring mask. Target (issue 13): 10,000 regions in under 10 s on 2 cores. Measured (2 shared cores):
1 process 10.2 s, 2 processes 6.3 s (was 12.8 s with 2 threads: the per-region work holds the GIL).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from core.grouping.descriptors import combine, describe
from core.regions.mebin import _available_cores


def synthetic_regions(count: int, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    crops, masks = [], []
    for index in range(count):
        side = int(rng.integers(24, 90))
        crop = rng.integers(0, 255, (side, side), dtype=np.uint8)
        mask = np.zeros((side, side), np.uint8)
        centre = (side // 2, side // 2)
        if index % 3 == 0:
            cv2.circle(mask, centre, side // 4, 255, -1)
        elif index % 3 == 1:
            cv2.line(mask, (2, side // 3), (side - 3, side // 2), 255, 2)
        else:
            cv2.circle(mask, centre, side // 3, 255, 3)
        crops.append(np.dstack([crop] * 3))
        masks.append(mask)
    return crops, masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=10_000)
    args = parser.parse_args(argv)
    crops, masks = synthetic_regions(args.regions)
    cores = _available_cores()
    print(f"{'workers':<10}{'regions':>10}{'seconds':>10}{'regions/s':>12}")
    for workers in sorted({1, cores}):
        started = time.perf_counter()
        combine(describe(crops, masks, workers=workers))
        seconds = time.perf_counter() - started
        print(f"{workers:<10}{args.regions:>10}{seconds:>10.2f}{args.regions / seconds:>12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
