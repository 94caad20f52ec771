"""Inference throughput on the demo test slide: patches/s and the time split between reading, model and writing.

Model: results/detectors/main/export/saved_model when it exists; otherwise the anchor GANomaly generator (proganomaly.model.networks,
config defaults) with random weights, exported through proganomaly.detector.export.save_detector (same signature, same serving
code; only the weights are untrained). Without a GPU the anchor's filter counts are divided by --width-divisor
(default 8; the paper's 512-filter blocks cost ~25 GFLOP per 64-px patch, minutes per run on a shared CPU); the
printed header says which model ran. Patches: results/detectors/main/tiles/demo_test.patches.parquet when it exists, otherwise
every patch of a regular grid at the model's size. Runs with prefetch off and on, `repeats` times each; prints medians.

    .venv/bin/python tests/benchmarks/bench_inference.py [--repeats 3] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from proganomaly.config import load_config  # noqa: E402
from proganomaly.data.slide import open_slide, read_patch  # noqa: E402
from proganomaly.detector.load import load_detector  # noqa: E402
from proganomaly.maps import inference, stitching  # noqa: E402
from proganomaly.scoring import make_scorer  # noqa: E402

SLIDE = ROOT / "results/demo/demo_test.tif"
EXPORT = ROOT / "results/detectors/main/export/saved_model"
TILES = ROOT / "results/detectors/main/tiles/demo_test.patches.parquet"


def _anchor(config, divisor: int):
    """The trained-model view that export.save_detector needs, around randomly initialised networks."""
    import dataclasses

    from proganomaly.model.architectures import build_networks
    from proganomaly.model.io import TrainedModel

    size = config.tiling.patch_size_px
    filters = [[max(1, f // divisor) for f in block] for block in config.model.filters]
    model_cfg = dataclasses.replace(config.model, filters=filters)
    return TrainedModel(build_networks(model_cfg, size, config.seed), size)


def model_path(tmp: Path, config, divisor: int) -> tuple[Path, str]:
    if (EXPORT / "saved_model.pb").exists():
        return EXPORT, "real export (results/detectors/main/export/saved_model)"
    from proganomaly.detector.export import save_detector

    path = tmp / "saved_model"
    gaussian = {"mean": np.zeros(3), "precision": np.eye(3) * 10.0}
    save_detector(make_scorer("rgb_error", _anchor(config, divisor)), gaussian, tau=5.0, path=path, jit_compile=False)
    return path, f"anchor {config.model.architecture} generator, random weights, filters / {divisor} (no real export)"


def patch_table(slide, size: int) -> tuple[pd.DataFrame, str]:
    if TILES.exists():
        return inference.check_patch_table(pd.read_parquet(TILES), str(TILES)), str(TILES.relative_to(ROOT))
    w, h = slide.dimensions
    xs, ys = np.meshgrid(np.arange(0, w - size + 1, size), np.arange(0, h - size + 1, size))
    table = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "width": size, "height": size})
    return inference.check_patch_table(table, "grid"), f"regular {size}-px grid (no tiling output yet)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--width-divisor", type=int, default=None, help="anchor filters divisor (default 1 on GPU, 8 on CPU)"
    )
    args = ap.parse_args()
    if args.width_divisor is None:
        import tensorflow as tf

        args.width_divisor = 1 if tf.config.list_physical_devices("GPU") else 8
    config = load_config(ROOT / "config/config.yaml")
    with tempfile.TemporaryDirectory() as tmp, open_slide(SLIDE) as slide:
        tmp = Path(tmp)
        path, which = model_path(tmp, config, args.width_divisor)
        det = load_detector(path)
        table, source = patch_table(slide, det.patch_size_px)
        det(np.zeros((args.batch_size, det.patch_size_px, det.patch_size_px, 3), np.uint8))  # trace once, untimed
        grid = stitching.MapGrid(*slide.dimensions, 1, slide.mpp)
        rows = []
        for prefetch in (0, 2):
            runs = []
            for _ in range(args.repeats):
                canvas = stitching.create_canvas(tmp / "canvas", grid, inference.CANVAS_MAPS)
                _, t = inference.run_inference(
                    slide, table, det, canvas, slide_id="demo_test", batch_size=args.batch_size,
                    prefetch_batches=prefetch, read_patch=read_patch,
                )  # fmt: skip
                runs.append(t)
            med = {
                k: statistics.median(r[k] for r in runs) for k in ("wall_s", "read_s", "wait_s", "model_s", "write_s")
            }
            rows.append((prefetch, med))
    print(f"slide: {SLIDE.relative_to(ROOT)} {slide.dimensions}, patches: {len(table)} from {source}")
    print(f"model: {which}, patch {det.patch_size_px} px, batch {args.batch_size}; medians of {args.repeats} runs")
    print(f"{'prefetch':>8} {'wall s':>8} {'patch/s':>8} {'read s':>8} {'wait s':>8} {'model s':>8} {'write s':>8}")
    for prefetch, m in rows:
        rate = len(table) / m["wall_s"]
        print(
            f"{prefetch:>8} {m['wall_s']:8.3f} {rate:8.1f} {m['read_s']:8.3f} {m['wait_s']:8.3f} "
            f"{m['model_s']:8.3f} {m['write_s']:8.3f}"
        )
    print(f"speed-up from prefetching: {rows[0][1]['wall_s'] / rows[1][1]['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
