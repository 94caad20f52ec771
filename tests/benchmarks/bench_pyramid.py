"""Time and peak memory of write_pyramid against image size: memory must stay flat while time grows with the pixels.

    .venv/bin/python tests/benchmarks/bench_pyramid.py [--sizes 2048 4096 8192 16384] [--compressions jpeg zstd]
                                                       [--workers 1] [--workdir DIR]

Each (size, compression) runs in a fresh subprocess that writes a size² pyramid from a synthetic tile source (an
array-like that makes each requested window on the fly, so no full image exists anywhere), and reports wall time,
the peak resident set size (getrusage ru_maxrss, whole process, interpreter and libraries included) and the peak of
tracemalloc (numpy buffers). Prints a table; ratios are relative to the smallest size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
import numpy as np
from proganomaly.maps.pyramid import write_pyramid

size, compression, workers, out = int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
rng = np.random.default_rng(0)
y, x = np.mgrid[0:512, 0:512]
texture = np.stack([128 + 90 * np.sin(x / 37), 128 + 80 * np.cos(y / 23), 128 + 60 * np.sin((x + y) / 51)], -1)
texture = np.clip(texture + rng.normal(0, 6, texture.shape), 0, 255).astype(np.uint8)

class Synthetic:
    shape, dtype = (size, size, 3), np.dtype(np.uint8)
    def __getitem__(self, key):
        (r0, r1, _), (c0, c1, _) = key[0].indices(size), key[1].indices(size)
        return texture[np.ix_(np.arange(r0, r1) % 512, np.arange(c0, c1) % 512)]

rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
start = time.perf_counter()
shapes = write_pyramid(out, Synthetic(), 0.25, compression=compression, maxworkers=workers)
seconds = time.perf_counter() - start
traced = tracemalloc.get_traced_memory()[1]
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mb": rss0 / 1024, "traced_mb": traced / 2**20, "levels": len(shapes)}))
"""


def run_one(size: int, compression: str, workers: int, workdir: Path) -> dict:
    out = workdir / f"bench_{size}_{compression}.tif"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT / "scripts"), str(size), compression, str(workers), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["file_mb"] = out.stat().st_size / 2**20
    out.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--compressions", nargs="+", default=["jpeg", "zstd"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-pyramid-") as tmp:
        header = (
            f"{'size':>7} {'comp':>5} {'levels':>6} {'Mpx':>7} {'s':>7} {'Mpx/s':>7} {'peak RSS MB':>11} "
            f"{'RSS ×':>6} {'traced MB':>9} {'file MB':>8}"
        )
        print(f"write_pyramid, RGB uint8, tile 256, maxworkers={args.workers}, cpus={os.cpu_count()}")
        print(header)
        print("-" * len(header))
        for compression in args.compressions:
            base = None
            for size in sorted(args.sizes):
                r = run_one(size, compression, args.workers, Path(tmp))
                base = base or r["rss_mb"]
                mpx = size * size / 1e6
                print(
                    f"{size:>7} {compression:>5} {r['levels']:>6} {mpx:>7.1f} {r['seconds']:>7.2f} "
                    f"{mpx / r['seconds']:>7.1f} {r['rss_mb']:>11.1f} {r['rss_mb'] / base:>6.2f} "
                    f"{r['traced_mb']:>9.2f} {r['file_mb']:>8.1f}"
                )


if __name__ == "__main__":
    main()
