"""Stitching a synthetic 100000×100000 px slide's maps at downsample 16 stays under 2 GB peak RSS.

Synthetic patch table (1024-px patches on a tissue disc, stride 1024) and synthetic per-patch outputs at model size
64 (no model): a flagged blob in every 35th patch. Each stage (accumulating patches into the canvases; writing the
maps, KDE and overviews) runs in its own subprocess, which reports its peak RSS from resource.getrusage(RUSAGE_SELF);
a small-slide run at the same settings gives the ratio.

    .venv/bin/python tests/benchmarks/bench_stitching.py [--size 100000] [--downsample 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {scripts!r})
from proganomaly.maps import inference
from proganomaly.maps import stitching
from proganomaly.maps import slidemaps

stage, work, size, ds, patch_l0, s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), 1024, 64
t0 = time.perf_counter()
if stage == "accumulate":
    grid = stitching.MapGrid(size, size, ds, 0.25)
    canvas = stitching.create_canvas(work + "/canvas", grid, inference.CANVAS_MAPS, extra={{"patches": -1}})
    rng = np.random.default_rng(0)
    c, r = size / 2, 0.45 * size
    n = 0
    base = {{
        "thumbnail": np.full((s, s, 3), 220.0, np.float32), "reconstruction": np.full((s, s, 3), 215.0, np.float32),
        "anomaly_map": np.full((s, s), 0.05, np.float32), "mahalanobis_d2": np.full((s, s), 3.0, np.float32),
        "flags": np.zeros((s, s), np.float32),
    }}
    blob = np.zeros((s, s), np.float32)
    blob[20:44, 16:40] = 1.0
    boxes, batch = [], {{k: [] for k in base}}

    def flush():
        # Batches of 32 in reading order, as infer_slide hands them over.
        stitching.add_patches(canvas, boxes, {{k: np.stack(v) for k, v in batch.items()}})
        boxes.clear()
        for v in batch.values():
            v.clear()

    for y in range(0, size - patch_l0 + 1, patch_l0):
        for x in range(0, size - patch_l0 + 1, patch_l0):
            if (x + patch_l0 / 2 - c) ** 2 + (y + patch_l0 / 2 - c) ** 2 > r * r:
                continue
            maps = dict(base)
            if (x // patch_l0) % 7 == 0 and (y // patch_l0) % 5 == 0:
                maps["flags"] = blob
                maps["mahalanobis_d2"] = 3.0 + 50.0 * blob
            boxes.append((x, y, patch_l0, patch_l0))
            for k, v in maps.items():
                batch[k].append(v)
            n += 1
            if len(boxes) == 32:
                flush()
    if boxes:
        flush()
    meta = json.loads((canvas.directory / "canvas.json").read_text())
    meta["patches"] = n
    (canvas.directory / "canvas.json").write_text(json.dumps(meta))
    out = {{"patches": n}}
else:
    tissue = np.zeros((size // 256, size // 256), np.uint8)
    yy, xx = np.mgrid[: tissue.shape[0], : tissue.shape[1]]
    tissue[(yy - tissue.shape[0] / 2) ** 2 + (xx - tissue.shape[1] / 2) ** 2 < (0.46 * tissue.shape[0]) ** 2] = 255
    kde = slidemaps.KdeParams("slide", 25.0, 4.0, 16.0, 0.5)
    meta = slidemaps.write_slide_maps(work + "/canvas", work + "/maps", work + "/overview", tissue_mask=tissue,
                                      tissue_downsample=256, kde=kde)
    out = {{"map": [meta["width"], meta["height"]], "sigma_px": meta["kde"]["sigma_map_px"]}}
out["wall_s"] = time.perf_counter() - t0
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps(out))
"""


def run_stage(stage: str, work: Path, size: int, ds: int) -> dict:
    """Run one stage in a fresh interpreter, which reports its own peak RSS (getrusage RUSAGE_SELF) at the end."""
    code = CHILD.format(scripts=str(ROOT / "scripts"))
    proc = subprocess.run(
        [sys.executable, "-c", code, stage, str(work), str(size), str(ds)], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"{stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--downsample", type=int, default=16)
    ap.add_argument("--small", type=int, default=20_000)
    args = ap.parse_args()
    rows = []
    for size in (args.small, args.size):
        with tempfile.TemporaryDirectory(dir=ROOT / "results" if (ROOT / "results").exists() else None) as tmp:
            t0 = time.perf_counter()
            acc = run_stage("accumulate", Path(tmp), size, args.downsample)
            maps = run_stage("maps", Path(tmp), size, args.downsample)
            disk = sum(f.stat().st_blocks * 512 for f in (Path(tmp) / "maps").glob("*.tif")) / 2**20
            rows.append((size, acc, maps, disk, time.perf_counter() - t0))
    print(f"synthetic slides, downsample {args.downsample}, 1024-px patches → 64-px model outputs, mpp 0.25")
    print(
        f"{'slide px':>9} {'patches':>8} {'map px':>11} {'accum s':>8} {'accum MB':>9} {'maps s':>8} {'maps MB':>8} "
        f"{'tif MB':>7}"
    )
    for size, acc, maps, disk, _ in rows:
        print(
            f"{size:>9} {acc['patches']:>8} {maps['map'][0]:>5}x{maps['map'][1]:<5} {acc['wall_s']:8.1f} "
            f"{acc['peak_rss_mb']:9.0f} {maps['wall_s']:8.1f} {maps['peak_rss_mb']:8.0f} {disk:7.1f}"
        )
    big = rows[-1]
    peak = max(big[1]["peak_rss_mb"], big[2]["peak_rss_mb"])
    area_ratio = (rows[-1][0] / rows[0][0]) ** 2
    print(
        f"slide area ratio {area_ratio:.0f}x; peak RSS ratio {peak / max(rows[0][1]['peak_rss_mb'], rows[0][2]['peak_rss_mb']):.2f}x"
    )
    print(f"peak RSS of the {args.size}-px slide: {peak:.0f} MB ({'under' if peak < 2048 else 'OVER'} 2 GB)")


if __name__ == "__main__":
    main()
