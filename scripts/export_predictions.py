"""Rule export_predictions: the predicted polygons of one evaluated slide at the operating point chosen on the
validation slides (QuPath GeoJSON), and the slide's areas and metrics at that point, all classes and per part."""

import json
from pathlib import Path

from proganomaly.common.runlog import provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.data.geojson import predicted_class, write_polygons
from proganomaly.evaluation import inputs as eval_io
from proganomaly.evaluation import operating
from proganomaly.evaluation.grid import GridSpec, predicted_polygons
from proganomaly.maps.zonal import mean_inside

log = setup_logging(snakemake.log[0])
config = from_params(snakemake.params, snakemake.rule)
ev = config.evaluation
slide = snakemake.wildcards.slide
inp, out = snakemake.input, snakemake.output
# Only the geometry of the sweep is used here; the one cell comes from operating_point.json.
spec = GridSpec((), (), ev.dilation_mode, ev.dilation_origin, float(ev.contour_tolerance_px))
op = json.loads(Path(inp.operating_point).read_text())

s = eval_io.load_slide(inp, ev, slide, log)
t, d = float(op["threshold"]), float(op["dilation"])
polys = predicted_polygons(s.kde, s.downsample, s.region, spec, s.mpp, t, d)
means = mean_inside(s.kde, polys, s.downsample)
areas = [{"area_um2": p.area * s.mpp**2, "area_px": p.area, "mean_kde": m} for p, m in zip(polys, means, strict=True)]
point = {"source": op["source"], "threshold": t, "dilation": d, "num_polygons": len(polys)}
write_polygons(
    out.geojson, polys, name=predicted_class(ev.class_name), color=ev.class_color, measurements=areas,
    slide_id=slide, coordinates="level-0 px", operating_point=point, mpp=s.mpp, provenance=provenance(slide=slide),
)  # fmt: skip

grid, part = operating.evaluate_point(s.kde, s.downsample, s.region, spec, s.mpp, s.parts, op, ev.beta)
record = operating.point_record(grid, part)
write_json(
    out.metrics,
    {
        "slide_id": slide,
        "operating_point": {k: v for k, v in op.items() if k != "provenance"},
        **record,
        "provenance": provenance(config.to_dict(), slide=slide, inputs=[str(inp.operating_point)]),
    },
)
log.info(
    "%s at %s (KDE > %g, dilation %g): %d polygons, F1 %s; per class %s",
    slide, op["source"], t, d, len(polys), record["all"]["f1"], {n: r["f1"] for n, r in record["class"].items()},
)  # fmt: skip
