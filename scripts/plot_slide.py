"""Rule plot_slide: thumbnail, d² map, KDE heat map and predicted polygons against annotations of one slide."""

import json
from pathlib import Path

from proganomaly.common.runlog import setup_logging
from proganomaly.config import from_params
from proganomaly.data.geojson import read_polygons
from proganomaly.report import slides, style

log = setup_logging(snakemake.log[0])
cfg = from_params(snakemake.params, snakemake.rule)
slide_id = snakemake.wildcards.slide
meta = json.loads(Path(snakemake.input.maps).read_text())
th = json.loads(Path(snakemake.input.threshold).read_text())
max_px = cfg.report.map_max_px
thumbnail = slides.read_map(snakemake.input.thumbnail, max_px)
d2 = slides.read_map(snakemake.input.d2, max_px)
kde = slides.read_map(snakemake.input.kde, max_px)
annotations, repairs = read_polygons(snakemake.input.annotations[0]) if snakemake.input.annotations else ([], [])
for r in repairs:
    log.warning("%s: %s", slide_id, r)
predicted = read_polygons(snakemake.input.predicted[0])[0] if snakemake.input.predicted else []
metrics = json.loads(Path(snakemake.input.metrics[0]).read_text()) if snakemake.input.metrics else {}
point = slides.operating_point_text(metrics)
fig = slides.plot_slide_panels(
    slide_id,
    thumbnail=thumbnail,
    d2=d2,
    kde=kde,
    level0_size=(int(meta["level0_width"]), int(meta["level0_height"])),
    mpp=float(meta["level0_mpp"]),
    tau=float(th["tau"]),
    annotations=annotations,
    predicted=predicted,
    operating_point=point if predicted or point else "evaluation not run",
)
style.save(fig, snakemake.output[0])
log.info(
    "%s: panels from %s px maps, %d annotation and %d predicted polygons",
    slide_id,
    d2.shape,
    len(annotations),
    len(predicted),
)
