"""Rule export_predictions: the predicted polygons of one evaluated slide at the operating point chosen on the
validation slides (QuPath GeoJSON), and the slide's areas and metrics at that point, all classes and per part, its
specificity there (normal tissue inside the polygons, FP area), which lesions the polygons hit, and a warning when
they cover more than half of the tissue."""

import json
from pathlib import Path

from proganomaly.common.runlog import provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.data.geojson import predicted_class, write_predictions
from proganomaly.evaluation import inputs as eval_io
from proganomaly.evaluation import lesions, operating, specificity
from proganomaly.evaluation.grid import GridSpec, clipped_pieces, overlap_area, predicted_polygons
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
# Ids in the prediction namespace (geojson.prediction_id): never equal to an annotation's of the same slide in QuPath.
write_predictions(
    out.geojson, polys, slide, t, d, name=predicted_class(ev.class_name), color=ev.class_color, measurements=areas,
    coordinates="level-0 px", operating_point=point, mpp=s.mpp, provenance=provenance(slide=slide),
)  # fmt: skip

grid, part = operating.evaluate_point(s.kde, s.downsample, s.region, spec, s.mpp, s.parts, op, ev.beta)
record = operating.point_record(grid, part)

ann_path = Path(inp.annotations[0])
geoms, table = lesions.slide_lesions(
    ann_path, s.annotation, s.region.tissue, ev.annotation_classes, ann_path.suffix.lower() in eval_io.MASK_SUFFIXES
)
pieces = clipped_pieces(polys, s.region)
table["covered"] = [overlap_area(pieces, g) for g in geoms]
hit = lesions.hits(table["covered"], table["area"], ev.lesion_min_overlap)
lesion_record = lesions.sensitivity(table, ev.lesion_min_overlap) | {
    "per_lesion": [
        {"lesion": int(r.lesion), "class": r["class"], "group": r.group, "area_um2": r.area * s.mpp**2,
         "covered_fraction": r.covered / r.area, "hit": bool(h)}
        for (_, r), h in zip(table.iterrows(), hit, strict=True)
    ]
}  # fmt: skip
areas = specificity.point_areas(record["all"])
normal_only = s.region.annotation.is_empty or s.region.annotation.area <= 0
warning = specificity.cover_warning(areas, slide)
if warning:
    log.warning(warning)
write_json(
    out.metrics,
    {
        "slide_id": slide,
        "operating_point": {k: v for k, v in op.items() if k != "provenance"},
        **record,
        "normal_only": bool(normal_only),
        "specificity": specificity.point_summary(areas),
        "lesions": lesion_record,
        "warning": warning,
        "provenance": provenance(config.to_dict(), slide=slide, inputs=[str(inp.operating_point)]),
    },
)
log.info(
    "%s at %s (KDE > %g, dilation %g): %d polygons, F1 %s (flag everything %s), normal tissue inside %s, lesions "
    "hit %d/%d; per class %s",
    slide, op["source"], t, d, len(polys), record["all"]["f1"], specificity.point_summary(areas)["f1_flag_everything"],
    specificity.point_summary(areas)["normal_tissue_in_polygons"], lesion_record["hit"], lesion_record["lesions"],
    {n: r["f1"] for n, r in record["class"].items()},
)  # fmt: skip
