"""Rule evaluate_slide: threshold × dilation grid, pixel-level AUROC/AP and QuPath GeoJSON for one annotated slide."""

import time

import numpy as np
import pandas as pd

from proganomaly.common.io import atomic_path
from proganomaly.common.raster import rasterize
from proganomaly.common.runlog import Progress, provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.data.geojson import predicted_class, write_polygons
from proganomaly.evaluation import geometry, metrics
from proganomaly.evaluation import inputs as eval_io
from proganomaly.evaluation.grid import GridSpec, Region, evaluate_grid, predicted_polygons
from proganomaly.maps.zonal import mean_inside

log = setup_logging(snakemake.log[0])
t_start = time.perf_counter()
config = from_params(snakemake.params, snakemake.rule)
ev = config.evaluation
slide = snakemake.wildcards.slide
inp, out = snakemake.input, snakemake.output
spec = GridSpec.from_config(ev)

# Every input is read and checked before the sweep.
info = eval_io.map_info(inp.maps)
ds, shape = float(info["downsample"]), (int(info["height"]), int(info["width"]))
qc = eval_io.read_json(inp.qc)
mpp = eval_io.slide_mpp(qc, inp.qc)
patches = eval_io.read_patches(inp.patches)
if not inp.annotations:
    raise ValueError(f"slide {slide} has no annotations in the slide sheet; it cannot be evaluated")
annotation, repairs = eval_io.read_annotation(
    inp.annotations[0], ev.annotation_classes, ev.annotation_mask_downsample, eval_io.slide_width(qc)
)
for line in repairs:
    log.warning("annotation: %s", line)
tissue = eval_io.tissue_region(patches)
region = Region.clipped(tissue, annotation)
kde = eval_io.read_map(inp.kde, shape)
finite = kde[np.isfinite(kde)]
if finite.size and (finite.min() < 0 or finite.max() > 1):
    log.warning(
        "%s: values outside [0, 1] (%.4g..%.4g); thresholds assume a [0, 1] KDE", inp.kde, finite.min(), finite.max()
    )
log.info(
    "%s: map %dx%d at downsample %g, mpp %g; tissue %.4g µm² from %d patches; annotation %.4g µm² (%.4g in tissue)",
    slide, shape[1], shape[0], ds, mpp, tissue.area * mpp**2, len(patches), annotation.area * mpp**2,
    region.annotation.area * mpp**2,
)  # fmt: skip

t0 = time.perf_counter()
progress = Progress(len(spec.thresholds) * len(spec.dilations), f"{slide} grid", unit="cells", logger=log)
grid = evaluate_grid(kde, ds, region, spec, mpp, progress=progress)
grid.insert(0, "slide_id", slide)
grid = metrics.with_metrics(grid, mpp, ev.beta)
grid_seconds = time.perf_counter() - t0
eval_io.write_tables(grid, out.grid, out.csv)

best = {"f1": metrics.best_cell(grid, "f1"), "iou": metrics.best_cell(grid, "iou")}
if ev.operating_point == "fixed":
    op = {"source": "fixed", "threshold": ev.operating_threshold, "dilation": ev.operating_dilation}
else:
    cell = best[ev.operating_point.removeprefix("best_")]
    op = {
        "source": ev.operating_point,
        **({"threshold": cell["threshold"], "dilation": cell["dilation"]} if cell else {}),
    }
if "threshold" in op:
    polys = predicted_polygons(kde, ds, region, spec, mpp, op["threshold"], op["dilation"])
else:
    log.warning("%s: %s is undefined in every cell (no annotation or prediction in tissue); no polygons exported", slide, op["source"])  # fmt: skip
    polys = []
op["num_polygons"] = len(polys)
means = mean_inside(kde, polys, ds)
areas = [{"area_um2": p.area * mpp**2, "area_px": p.area, "mean_kde": m} for p, m in zip(polys, means, strict=True)]
write_polygons(
    out.geojson, polys, name=predicted_class(ev.class_name), color=ev.class_color, measurements=areas,
    slide_id=slide, coordinates="level-0 px", operating_point=op, mpp=mpp, provenance=provenance(slide=slide),
)  # fmt: skip

# Pixel level: every tissue pixel of the map grid (pixel-centre rule), or a seeded subsample of them.
tissue_mask = geometry.boxes_mask(patches["x"], patches["y"], patches["width"], patches["height"], shape, ds)
labels_map = rasterize(annotation, shape, ds)
flat = np.flatnonzero(tissue_mask)
pick = flat[metrics.sample_pixels(len(flat), ev.max_pixels, config.seed, slide)]
sample = pd.DataFrame({"label": labels_map.ravel()[pick]})
sample["kde"] = kde.ravel()[pick]
del kde, labels_map, tissue_mask
for name in ("mahalanobis_d2", "anomaly_map"):
    sample[name] = eval_io.read_map(inp[name], shape).ravel()[pick]
sample["weight"] = len(flat) / max(len(pick), 1)
sample.insert(0, "slide_id", slide)
with atomic_path(out.pixels) as tmp:
    sample.to_parquet(tmp, index=False)
pixel = {
    name: metrics.pixel_scores(sample["label"], sample[name], curve_points=ev.curve_points)
    for name in ("mahalanobis_d2", "anomaly_map", "kde")
}
for name, res in pixel.items():
    log.info("%s pixel-level %s: AUROC %s, AP %s over %d pixels", slide, name, res["auroc"], res["average_precision"], res["n_pixels"])  # fmt: skip

write_json(
    out.metrics,
    {
        "slide_id": slide,
        "mpp": mpp,
        "map": {"downsample": ds, "width": shape[1], "height": shape[0], "mpp": info.get("mpp")},
        "tissue_area_um2": tissue.area * mpp**2,
        "annotation_area_um2": annotation.area * mpp**2,
        "annotation_in_tissue_um2": region.annotation.area * mpp**2,
        "annotation_repairs": repairs,
        "contour_tolerance_px": spec.contour_tolerance_px,
        "cells": len(grid),
        "cells_skipped": 0,
        "best_f1": best["f1"],
        "best_iou": best["iou"],
        "operating_point": op,
        "pixel": {
            "tissue_pixels": len(flat),
            "sampled_pixels": len(pick),
            "annotated_tissue_pixels_sampled": int(sample["label"].sum()),
            **pixel,
        },
        "seconds": {"grid": grid_seconds, "total": time.perf_counter() - t_start},
        "provenance": provenance(config.to_dict(), slide=slide),
    },
)
log.info(
    "%s: %d cells in %.1f s; best F1 %s, best IoU %s; %d polygons exported",
    slide, len(grid), grid_seconds, best["f1"] and round(best["f1"]["value"], 4),
    best["iou"] and round(best["iou"]["value"], 4), len(polys),
)  # fmt: skip
