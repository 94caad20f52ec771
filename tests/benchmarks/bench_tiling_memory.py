"""Memory and time of tiling (and record writing) on a synthetic 40000 × 40000 slide, for a few tissue fractions.

    .venv/bin/python tests/benchmarks/bench_tiling_memory.py [--size 40000] [--fractions 0.025 0.05 0.1]
                                                             [--no-records] [--workdir DIR]

For each tissue fraction it writes a pyramidal RGB TIFF (JPEG 256² tiles, levels down to 1/32) from a tile generator,
so the 40000² image never exists in memory, then runs, each in a fresh subprocess that reports its own peak RSS
(getrusage ru_maxrss): (1) tile_slide (thumbnail, tissue mask, scored grid) and (2) tile_slide + write_slide_records
(64 px patches at 1 µm/px = 256 level-0 px of the 0.25 µm/px slide, records at 4…64 px). Target: peak < 1.5 GB, time
growing with tissue area, not slide area. Prints a table; the ratios are relative to the smallest fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

MPP = 0.25
TILE = 256
CELL = 64  # level-0 px per cell of the tissue layout
FACTORS = (2, 4, 8, 16, 32)
TISSUE_RGB = np.array([190, 110, 165], np.float32)
GLASS_RGB = np.array([243, 243, 241], np.float32)


def tissue_layout(size: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean (cells × cells) layout: random round blobs added until they cover `fraction` of the slide."""
    n = -(-size // CELL)
    rng = np.random.default_rng(seed)
    layout = np.zeros((n, n), bool)
    yy, xx = np.ogrid[0:n, 0:n]
    while layout.mean() < fraction:
        r = rng.uniform(0.03, 0.08) * n
        cy, cx = rng.uniform(r, n - r, 2)
        layout |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return layout


def tiles(layout: np.ndarray, size: int, ds: int, texture: np.ndarray):
    """Row-major RGB tiles of the level with downsample `ds`; a pixel is tissue when its centre's cell is."""
    n_px = -(-size // ds)
    n_tiles = -(-n_px // TILE)
    white = np.broadcast_to(GLASS_RGB.astype(np.uint8), (TILE, TILE, 3))
    for ty in range(n_tiles):
        rows = np.minimum(((ty * TILE + np.arange(TILE) + 0.5) * ds // CELL).astype(np.int64), layout.shape[0] - 1)
        band = layout[rows]
        for tx in range(n_tiles):
            cols = np.minimum(((tx * TILE + np.arange(TILE) + 0.5) * ds // CELL).astype(np.int64), layout.shape[1] - 1)
            mask = band[:, cols]
            if not mask.any():
                yield white
                continue
            tile = np.where(mask[..., None], TISSUE_RGB * texture, GLASS_RGB)
            yield tile.astype(np.uint8)


def write_slide(path: Path, size: int, fraction: float) -> None:
    import tifffile

    layout = tissue_layout(size, fraction)
    rng = np.random.default_rng(1)
    texture = (0.85 + 0.3 * rng.random((TILE, TILE, 1))).astype(np.float32)  # stain texture, so JPEG has work
    opts = {"tile": (TILE, TILE), "compression": "jpeg", "photometric": "rgb", "dtype": np.uint8}
    res = {"resolution": (1e4 / MPP, 1e4 / MPP), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles(layout, size, 1, texture), shape=(size, size, 3), subifds=len(FACTORS), **opts, **res)
        for f in FACTORS:
            n = -(-size // f)
            tw.write(tiles(layout, size, f, texture), shape=(n, n, 3), subfiletype=1, **opts)


CHILD = r"""
import json, resource, sys, tempfile, time
sys.path.insert(0, {scripts!r})
from proganomaly.config import load_config
from proganomaly.data.slide import open_slide
from proganomaly.data.tiling import tile_slide
cfg = load_config({config!r})
out = {{}}
t0 = time.perf_counter()
with open_slide({slide!r}) as slide:
    res = tile_slide(slide, "bench", cfg.tiling)
    out["tiling_s"] = time.perf_counter() - t0
    out["patches"] = len(res.patches)
    out["tissue_fraction"] = res.qc["tissue_fraction"]
    if {records}:
        t1 = time.perf_counter()
        import tensorflow  # imported up front so that its start-up (~10 s) is not counted as writing time
        from proganomaly.data.records import write_slide_records
        out["tf_import_s"] = time.perf_counter() - t1
        sizes = cfg.records.resolutions(cfg.tiling.patch_size_px)
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            write_slide_records(slide, res.patches, tmp, sizes, cfg.records.shard_max_examples,
                                cfg.tiling.patch_size_px)
            out["records_s"] = time.perf_counter() - t1
out["total_s"] = time.perf_counter() - t0
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run_child(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def repeated(code: str, repeats: int) -> dict:
    """Median of every timing over `repeats` fresh processes, the largest peak RSS (the machine may be shared)."""
    runs = [run_child(code) for _ in range(repeats)]
    out = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["patches"] = runs[0]["patches"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=40000)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.025, 0.05, 0.1])
    ap.add_argument("--no-records", action="store_true", help="measure tiling only")
    ap.add_argument("--repeats", type=int, default=3, help="processes per measurement (medians are reported)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the slides here (default: a temp dir, removed)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_tiling_"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "bench_config.yaml"
    config.write_text(
        "tiling:\n  patch_size_px: 64\n  target_mpp: 1.0\n  stride_px: 64\n  min_tissue_fraction: 0.5\n"
        "  thumbnail_mpp: 8.0\nrecords:\n  min_size_px: 4\n  shard_max_examples: 4096\n"
    )
    rows = []
    try:
        for fraction in args.fractions:
            slide = work / f"synthetic_{args.size}_{fraction:g}.tif"
            gen = {"fraction": fraction}
            sidecar = slide.with_suffix(".gen.json")  # generation figures, kept with a reused slide
            if not slide.exists():
                code = (
                    f"import resource, sys, json, time; sys.path.insert(0, {str(Path(__file__).parent)!r});"
                    "from bench_tiling_memory import write_slide; t = time.perf_counter();"
                    f"write_slide(__import__('pathlib').Path({str(slide)!r}), {args.size}, {fraction});"
                    "print(json.dumps({'gen_s': time.perf_counter() - t, "
                    "'gen_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
                )
                sidecar.write_text(json.dumps(run_child(code)))
            if sidecar.exists():
                gen.update(json.loads(sidecar.read_text()))
            gen["file_mb"] = slide.stat().st_size / 2**20
            common = {"scripts": str(ROOT / "scripts"), "config": str(config), "slide": str(slide)}
            gen["tiling"] = repeated(CHILD.format(records=False, **common), args.repeats)
            if not args.no_records:
                gen["records"] = repeated(CHILD.format(records=True, **common), args.repeats)
            rows.append(gen)
            print(f"done {fraction}: {json.dumps(gen)}", file=sys.stderr, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nsynthetic {args.size} x {args.size} px slide, {MPP} um/px, JPEG {TILE}^2 tiles, levels 1/{FACTORS}")
    print(f"times: medians of {args.repeats} fresh processes; RSS: the largest peak (getrusage ru_maxrss)")
    head = "| tissue | patches | file MB | gen s | gen RSS MB | tile_slide s | tile_slide RSS MB |"
    if not args.no_records:
        head += " TF import s | records s | +records RSS MB | records ms/patch |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    base = rows[0]
    for r in rows:
        t = r["tiling"]
        line = (
            f"| {t['tissue_fraction']:.3f} | {t['patches']} | {r['file_mb']:.0f} | {r.get('gen_s', float('nan')):.0f}"
            f" | {r.get('gen_rss_mb', float('nan')):.0f} | {t['tiling_s']:.2f} | {t['peak_rss_mb']:.0f} |"
        )
        if not args.no_records:
            rec = r["records"]
            line += (
                f" {rec['tf_import_s']:.1f} | {rec['records_s']:.1f} | {rec['peak_rss_mb']:.0f}"
                f" | {rec['records_s'] / max(rec['patches'], 1) * 1e3:.2f} |"
            )
        print(line)
    if not args.no_records and len(rows) > 1:
        print("\nratios to the smallest fraction (tissue area, patches, records time):")
        b = base["records"]
        for r in rows[1:]:
            rec = r["records"]
            print(
                f"  tissue x{rec['tissue_fraction'] / b['tissue_fraction']:.2f}  patches x{rec['patches'] / b['patches']:.2f}"
                f"  records time x{rec['records_s'] / b['records_s']:.2f}"
            )


if __name__ == "__main__":
    main()
