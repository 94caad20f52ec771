"""Rule infer_slide: run the exported detector over one slide's tissue patches.

Writes the per-patch table (slide_id, x, y, width, height, flagged_fraction, mean_d2, max_d2, score [, latent_norm])
and the disk-backed stitching canvases (sums and covered area at the map downsample) that stitch_maps turns into
maps, plus a JSON with timings and provenance. The slide is opened once and never held in memory.

With `resources.gpus.inference` > 1 the SavedModel is loaded once under a MirroredStrategy over that many GPUs and
each batch of `inference.batch_size` patches is split into equal contiguous shares, one per GPU
(proganomaly.detector.load); the outputs are per patch, so the maps equal a one-GPU run's.

By hand: python scripts/infer_slide.py SLIDE_ID SLIDE_FILE PATCHES.parquet SAVED_MODEL OUT_DIR [MPP]
"""

import functools
import sys
from pathlib import Path

import pandas as pd

from proganomaly.common import runlog
from proganomaly.common.devices import replica_strategy
from proganomaly.common.io import atomic_path
from proganomaly.config import from_params, load_config
from proganomaly.data.stain import slide_normaliser
from proganomaly.detector.load import load_detector
from proganomaly.maps import inference, kde, stitching


def main(
    slide_id,
    slide_path,
    patches_path,
    model_path,
    out_patches,
    out_canvas,
    out_json,
    mpp,
    config,
    raw_config,
    log_path=None,
    stain_path=None,
):
    log = runlog.setup_logging(log_path)
    from proganomaly.data.slide import open_slide, read_patch

    table = inference.check_patch_table(pd.read_parquet(patches_path), str(patches_path))
    gpus = config.resources.gpus.inference
    detector = load_detector(model_path, strategy=replica_strategy(gpus, "resources.gpus.inference"))
    if gpus > 1:
        log.info("each batch of %d patches split over %d GPUs", config.inference.batch_size, gpus)
    channels = dict(inference.CANVAS_MAPS)
    patch_kde = None
    if config.stitching.kde.method == "patch":
        k = config.stitching.kde
        channels["kde_patch"] = 1

        def patch_kde(flags):
            return kde.patch_kde(
                flags, bandwidth_px=k.patch_bandwidth_px, bins=k.patch_bins, min_object_px=k.patch_min_object_px,
                min_points=k.patch_min_points, scaling_factor=k.patch_scaling_factor,
                scaling_power=k.patch_scaling_power,
            )  # fmt: skip

    inf = config.inference
    read = functools.partial(read_patch, from_pyramid=inf.read_from_pyramid)
    # The slide's one stain estimate (tile_slide's stain.json) maps every patch, as write_records did for training.
    normaliser = slide_normaliser(config.stain.normalisation, stain_path)
    if normaliser is not None:
        read = _normalised(read, normaliser)
        log.info("%s: patches stain-normalised (%s) with %s", slide_id, config.stain.normalisation, stain_path)
    with open_slide(slide_path, mpp=mpp) as slide:
        width, height = slide.dimensions
        ds = stitching.map_downsample(config.stitching.map_mpp, float(slide.mpp))
        grid = stitching.MapGrid(int(width), int(height), ds, float(slide.mpp))
        need = stitching.check_free_space(Path(out_canvas).parent, grid, channels, slide_id)
        log.info(
            "%s: %d patches of %d px (model), level 0 %d×%d, maps %d×%d at downsample %d (%.3g µm/px), canvases "
            "%.2f GB", slide_id, len(table), detector.patch_size_px, width, height, grid.width, grid.height,
            grid.downsample, grid.map_mpp, need / 1e9,
        )  # fmt: skip
        if len(table) and inf.read_from_pyramid:
            row = table.iloc[0]
            level, k = slide.patch_level(int(row.x), int(row.y), int(row.width), detector.patch_size_px)
            log.info("patches read from pyramid level %d (downsample %d) where aligned, else level 0", level, k)
        canvas = stitching.create_canvas(
            out_canvas, grid, channels, extra={"slide_id": slide_id, "patches": len(table)}
        )
        progress = runlog.Progress(len(table), f"infer {slide_id}", unit="patches")
        result, timings = inference.run_inference(
            slide, table, detector, canvas, slide_id=slide_id, batch_size=inf.batch_size,
            prefetch_batches=inf.prefetch_batches, read_patch=read, patch_kde=patch_kde, progress=progress.update,
            border_px=config.calibration.border_px,
            read_threads=inf.read_threads, write_queue_batches=inf.write_queue_batches,
        )  # fmt: skip
    with atomic_path(out_patches) as tmp:
        result.to_parquet(tmp, index=False)
    rate = len(table) / timings["wall_s"] if timings["wall_s"] else float("nan")
    log.info(
        "%s: %.1f patches/s; read %.1f s (%d threads, overlapped), model waited %.1f s on reads, model %.1f s, "
        "write %.1f s (overlapped), model waited %.1f s on writes (+%.1f s for the last), wall %.1f s",
        slide_id, rate, timings["read_s"], inf.read_threads, timings["wait_s"], timings["model_s"],
        timings["write_s"], timings["stall_s"], timings["drain_s"], timings["wall_s"],
    )  # fmt: skip
    runlog.write_json(
        out_json,
        runlog.provenance(
            raw_config, slide_id=slide_id, slide_file=str(slide_path), saved_model=str(model_path),
            patch_size_px=detector.patch_size_px, patches=len(table), map_grid=grid.__dict__, timings=timings,
            patches_per_s=rate, stain_normalisation=config.stain.normalisation,
            stain_estimate=str(stain_path) if normaliser else None,
        ),
    )  # fmt: skip


def _normalised(read, normaliser):
    def read_normalised(*args, **kwargs):
        return normaliser(read(*args, **kwargs))

    return read_normalised


if __name__ == "__main__" and "snakemake" not in globals():
    args = sys.argv[1:]
    if len(args) not in (5, 6):
        sys.exit(__doc__)
    cfg = load_config("config/config.yaml")
    out = Path(args[4])
    main(
        args[0], args[1], args[2], args[3], out / "patches.parquet", out / "canvas", out / "inference.json",
        float(args[5]) if len(args) == 6 else None, cfg, cfg.to_dict(),
        stain_path=Path(args[2]).with_name(f"{args[0]}.stain.json"),  # tile_slide writes it beside the patch table
    )  # fmt: skip
else:
    main(
        snakemake.wildcards.slide, snakemake.input.slide, snakemake.input.patches, snakemake.input.model,
        snakemake.output.patches, snakemake.output.canvas, snakemake.output.json, snakemake.params.mpp,
        (cfg := from_params(snakemake.params, snakemake.rule)), cfg.to_dict(), snakemake.log[0],
        stain_path=snakemake.input.get("stain") or None,
    )  # fmt: skip
