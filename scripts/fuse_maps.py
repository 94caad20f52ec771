"""Rule fuse_maps: a slide's final maps from its detectors' stitched d² maps (proganomaly.maps.fused): the fused
score, flags above the fused τ (fit_fusion), the KDE and every map, overview and maps.json that one detector's
stitch_maps would write, and the per-patch QuPath tiles of the primary detector."""

import json
import shutil
from pathlib import Path

from proganomaly.common import runlog
from proganomaly.config import from_params
from proganomaly.maps import fused, pyramid
from proganomaly.maps.names import MAP_NAMES
from proganomaly.maps.slidemaps import KdeParams

if __name__ == "__main__":
    log = runlog.setup_logging(snakemake.log[0])
    cfg = from_params(snakemake.params, snakemake.rule)
    inp, out = snakemake.input, snakemake.output
    detectors = list(snakemake.params.detector_names)
    metas = fused.read_json(inp.maps)
    grid = fused.check_same_grid(metas, detectors)
    fit = json.loads(Path(inp.fusion).read_text())
    if fit["detectors"] != detectors:
        raise SystemExit(f"{inp.fusion} was fitted for detectors {fit['detectors']}, not {detectors}: rerun fit_fusion")
    thresholds = fused.read_thresholds(inp.thresholds)
    score, used = fused.slide_score(inp.d2, metas, thresholds, fit["method"])
    s, k = cfg.stitching, cfg.stitching.kde
    shapes = pyramid.level_shapes(grid.height, grid.width, s.tile_px)
    progress = runlog.Progress(pyramid.count_tiles(shapes, s.tile_px) * len(MAP_NAMES), "fused tiles", unit="tiles")
    meta = fused.write_fused_maps(
        score, fit["tau"], Path(inp.maps[0]).parent / "maps", inp.coverage, grid, Path(out.maps[0]).parent,
        Path(out.overviews[0]).parent, kde=KdeParams(k.method, k.bandwidth_um, k.truncate, k.min_object_um2, k.ceiling),
        tile_px=s.tile_px, rgb_compression=s.rgb_compression, overview_max_px=s.overview_max_px,
        work_tile_px=s.work_tile_px, progress=progress.update,
    )  # fmt: skip
    meta["fusion"] = {"method": fit["method"], "tau": fit["tau"], "detectors": dict(zip(detectors, used, strict=True))}
    log.info("%s: fused %s of %s; %s of the scored tissue flagged", snakemake.wildcards.slide, fit["method"],
             detectors, meta["slide_standardisation"]["flagged_fraction"])  # fmt: skip
    # QuPath's per-patch tiles are the primary detector's: the fused score has no patches of its own
    shutil.copyfile(inp.tiles, out.tiles)
    runlog.write_json(out.json, runlog.provenance(cfg.to_dict(), **meta))
