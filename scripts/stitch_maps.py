"""Rule stitch_maps: turn a slide's inference canvases into pyramidal TIFF maps, PNG overviews and maps.json.

With calibration.slide_standardisation: robust the flags (and so the KDE) come from the slide's robust z of its
stitched d² map against τ_z of the threshold file (threshold.json, or the detector's model card when screening).

By hand: python scripts/stitch_maps.py CANVAS_DIR QC.json TISSUE.png OUT_DIR [THRESHOLD.json]
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from proganomaly.calibration.threshold import tau_z_of
from proganomaly.common import runlog
from proganomaly.config import from_params, load_config
from proganomaly.data.geojson import write_tiles
from proganomaly.maps import pyramid, slidemaps


def main(
    canvas_dir, qc_path, tissue_path, maps_dir, overview_dir, maps_json, config, raw_config, log_path=None,
    threshold_path=None,
):  # fmt: skip
    log = runlog.setup_logging(log_path)
    tau_z = None
    if config.calibration.slide_standardisation == "robust":
        if threshold_path is None:
            raise ValueError("calibration.slide_standardisation is 'robust': give the threshold file (threshold.json)")
        tau_z = tau_z_of(json.loads(Path(threshold_path).read_text()), str(threshold_path))
    qc = json.loads(Path(qc_path).read_text())
    if "thumbnail_downsample" not in qc:
        raise ValueError(f"{qc_path}: no thumbnail_downsample; re-run tile_slide to rebuild the QC JSON")
    tissue = np.asarray(Image.open(tissue_path))
    if tissue.ndim == 3:
        tissue = tissue[..., 0]
    s = config.stitching
    k = s.kde
    canvas_meta = json.loads((Path(canvas_dir) / "canvas.json").read_text())
    grid = canvas_meta["grid"]
    shapes = pyramid.level_shapes(
        -(-grid["height_l0"] // grid["downsample"]), -(-grid["width_l0"] // grid["downsample"]), s.tile_px
    )
    progress = runlog.Progress(
        pyramid.count_tiles(shapes, s.tile_px) * len(slidemaps.MAP_NAMES), "stitch tiles", unit="tiles"
    )
    meta = slidemaps.write_slide_maps(
        canvas_dir, maps_dir, overview_dir, tissue_mask=tissue, tissue_downsample=float(qc["thumbnail_downsample"]),
        kde=slidemaps.KdeParams(k.method, k.bandwidth_um, k.truncate, k.min_object_um2, k.ceiling),
        tile_px=s.tile_px, rgb_compression=s.rgb_compression, overview_max_px=s.overview_max_px,
        work_tile_px=s.work_tile_px, progress=progress.update, tau_z=tau_z,
    )  # fmt: skip
    log.info("maps of %s: %d×%d px at downsample %d", canvas_dir, meta["width"], meta["height"], meta["downsample"])
    runlog.write_json(maps_json, runlog.provenance(raw_config, **meta))


if __name__ == "__main__" and "snakemake" not in globals():
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    cfg = load_config("config/config.yaml")
    out = Path(sys.argv[4])
    threshold = sys.argv[5] if len(sys.argv) == 6 else "results/detectors/main/calibration/threshold.json"
    main(*sys.argv[1:4], out / "maps", out / "overview", out / "maps.json", cfg, cfg.to_dict(), None, threshold)
else:
    main(
        snakemake.input.canvas, snakemake.input.qc, snakemake.input.tissue, Path(snakemake.output.maps[0]).parent,
        Path(snakemake.output.overviews[0]).parent, snakemake.output.json,
        (cfg := from_params(snakemake.params, snakemake.rule)), cfg.to_dict(), snakemake.log[0],
        snakemake.input.threshold,
    )  # fmt: skip
    # Per-patch scores as QuPath tiles (level-0 px, like the slide), beside the maps they explain: each patch's stride
    # cell, so the tiles do not overlap (geojson.tile_cells).
    write_tiles(
        snakemake.output.tiles, pd.read_parquet(snakemake.input.patches), snakemake.wildcards.slide,
        stride=json.loads(Path(snakemake.input.qc).read_text())["patch"]["stride_level0_px"],
    )  # fmt: skip
