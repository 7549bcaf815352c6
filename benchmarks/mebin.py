"""MEBin speed: the plain OpenCV oracle against the fast path, on the same maps, in one run.

    python benchmarks/mebin.py [--maps 64] [--size 256] [--repeats 5]

Prints maps/s per implementation on one core and on all cores, the fast/oracle ratio, and
numba's compile time (cold cache and cached load, each in a fresh process) separately; timed
runs start after a warm-up call. Outputs are checked identical before anything is timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from core.config import MEBinConfig
from core.regions.mebin import binarize, binarize_reference

ROOT = Path(__file__).resolve().parents[1]


def make_maps(kind: str, count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """uint8 maps on one global scale. blobs: blurred defects on a faint noise floor (typical
    detector output); dense: smooth fields everywhere above the set's s_min (worst case)."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(count):
        if kind == "blobs":
            image = np.zeros((size, size), np.float32)
            points = int(rng.integers(1, 10))
            image[rng.integers(0, size, points), rng.integers(0, size, points)] = rng.uniform(0.3, 1, points)
            image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(3, 10)))
            image /= image.max()
            image += 0.05 * rng.random((size, size), dtype=np.float32)
            image *= rng.uniform(0.4, 1.0)
        else:
            image = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), 6.0)
            image = (image - image.min()) / (image.max() - image.min())
            image = 0.5 + 0.5 * image * rng.uniform(0.6, 1.0)
        maps.append(image)
    peak = max(float(m.max()) for m in maps)
    return [np.clip(m / peak * 255, 0, 255).astype(np.uint8) for m in maps]


def reference_parallel(maps: list[np.ndarray], workers: int) -> list:
    """The oracle spread over threads (OpenCV releases the GIL); search range kept global."""
    # binarize_reference computes s_min/s_max from what it is given, so the split must not
    # change them: each chunk carries the two maps holding the set's extreme maxima.
    maxima = [int(m.max()) for m in maps]
    extremes = [maps[int(np.argmin(maxima))], maps[int(np.argmax(maxima))]]
    chunks = [maps[start::workers] for start in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda chunk: binarize_reference(chunk + extremes)[: len(chunk)], chunks))
    results: list = [None] * len(maps)
    for start, part in enumerate(parts):
        results[start::workers] = part
    return results


def timed(function, repeats: int) -> float:
    """Median seconds of one call over repeats (after one untimed warm-up call)."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def compile_times() -> tuple[float, float]:
    """(cold, cached) seconds of import + first binarize call, each in a fresh process."""
    snippet = (
        "import time; t = time.perf_counter(); import numpy as np; "
        "from core.regions.mebin import binarize; binarize([np.zeros((8, 8), np.uint8), "
        "np.eye(8, dtype=np.uint8) * 9], workers=1); print(time.perf_counter() - t)"
    )
    with tempfile.TemporaryDirectory() as cache:
        environment = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [
            float(subprocess.run([sys.executable, "-c", snippet], env=environment, cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout)
            for _ in range(2)
        ]
    return runs[0], runs[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kinds", default="blobs,dense")
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    cold, cached = compile_times()
    print(f"numba compile + import, first call: cold cache {cold:.2f} s, cached {cached:.2f} s")
    print(f"{args.maps} maps of {args.size}x{args.size}, {cores} cores, median of {args.repeats}")
    print()
    header = f"{'maps':6} {'implementation':34} {'cores':>5} {'maps/s':>10} {'ms/map':>8} {'vs oracle 1 core':>17}"
    print(header)
    print("-" * len(header))
    for kind in args.kinds.split(","):
        maps = make_maps(kind, args.maps, args.size)
        oracle = binarize_reference(maps, MEBinConfig())
        fast = binarize(maps, workers=1)
        for a, b in zip(fast, oracle):  # identical output, or the timing means nothing
            assert a.threshold == b.threshold and a.num_anomalies == b.num_anomalies
            assert np.array_equal(a.counts, b.counts) and np.array_equal(a.mask, b.mask)
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(reference_parallel(maps, cores), oracle))

        previous_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        rows = [
            ("oracle (cv2 per threshold)", 1, timed(lambda: binarize_reference(maps), args.repeats)),
            ("fast (erode once + union-find)", 1, timed(lambda: binarize(maps, workers=1), args.repeats)),
        ]
        cv2.setNumThreads(previous_threads)
        rows += [
            ("oracle, thread pool", cores, timed(lambda: reference_parallel(maps, cores), args.repeats)),
            ("fast, thread pool", cores, timed(lambda: binarize(maps, workers=cores), args.repeats)),
        ]
        baseline = rows[0][2]
        for name, used, seconds in rows:
            print(f"{kind:6} {name:34} {used:>5} {args.maps / seconds:>10.0f} "
                  f"{seconds / args.maps * 1e3:>8.3f} {baseline / seconds:>16.1f}x")
        print(f"{kind:6} single-core ratio fast/oracle: {rows[0][2] / rows[1][2]:.1f}x (target >= 20x); "
              f"all cores: {rows[2][2] / rows[3][2]:.1f}x")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
