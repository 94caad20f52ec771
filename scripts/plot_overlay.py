"""Rule plot_overlay: one picture per mapped slide (validation, test, threshold): thumbnail, KDE heat map, predicted
and true polygons, legend and scale bar."""

import json
from pathlib import Path

from proganomaly.common.runlog import setup_logging
from proganomaly.config import from_params
from proganomaly.data.geojson import read_polygons
from proganomaly.report import slides, style

log = setup_logging(snakemake.log[0])
cfg = from_params(snakemake.params, snakemake.rule)
inp = snakemake.input
slide_id = snakemake.wildcards.slide
meta = json.loads(Path(inp.maps).read_text())
max_px = cfg.report.map_max_px
thumbnail = slides.read_map(inp.thumbnail, max_px)
kde = slides.read_map(inp.kde, max_px)
if inp.annotations:
    annotations, repairs = read_polygons(inp.annotations[0])
    for r in repairs:
        log.warning("%s: %s", slide_id, r)
    truth = "" if annotations else "annotated with no anomalies: every tissue pixel is normal"
else:
    annotations, truth = [], "no annotation file: no true polygons"
predicted = read_polygons(inp.predicted[0])[0] if inp.predicted else []
point = slides.operating_point_text(json.loads(Path(inp.metrics[0]).read_text())) if inp.metrics else ""
fig = slides.plot_overlay(
    slide_id,
    thumbnail=thumbnail,
    kde=kde,
    level0_size=(int(meta["level0_width"]), int(meta["level0_height"])),
    mpp=float(meta["level0_mpp"]),
    annotations=annotations,
    predicted=predicted,
    split=snakemake.params.split,
    operating_point=f"predicted polygons at the operating point: {point}" if point else "",
    note=truth,
)
style.save(fig, snakemake.output[0])
log.info(
    "%s (%s): overlay from a %s px KDE map, %d true and %d predicted polygons",
    slide_id, snakemake.params.split, kde.shape, len(annotations), len(predicted),
)  # fmt: skip
