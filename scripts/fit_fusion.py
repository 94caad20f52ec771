"""Rule fit_fusion: τ of the fused score, the `fusion.normal_quantile` of its normal pixels on the threshold and
validation slides (scored tissue outside every annotation grown by `fusion.annotation_margin_um`: a per-patch score
spills over a patch around an anomaly, as fit_threshold drops the patches that touch one).

Inputs are ordered slide-major: the d² maps and maps.json of slide 1's detectors, then slide 2's, …; params name the
slides, detectors and annotation files.
"""

import numpy as np

from proganomaly.common.raster import rasterize
from proganomaly.common.runlog import provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.evaluation.inputs import read_annotation
from proganomaly.maps import fused, fusion


def main(slides, detectors, d2, maps, thresholds, tissue, annotations, method, q, margin_um, log):
    n = len(detectors)
    th = fused.read_thresholds(thresholds)
    normal, per_slide = [], {}
    for i, slide in enumerate(slides):
        rows = slice(i * n, (i + 1) * n)
        metas = fused.read_json(maps[rows])
        score, used = fused.slide_score(d2[rows], metas, th, method)
        grid = fused.grid_of(metas[0])
        annotated = np.zeros(score.shape, bool)
        if annotations.get(slide):
            region, repairs = read_annotation(annotations[slide])
            for r in repairs:
                log.warning("%s: %s", slide, r)
            if not region.is_empty:
                annotated = rasterize(region.buffer(margin_um / grid.mpp), score.shape, grid.downsample)
        values = fusion.normal_pixels(score, fused.read_level0(tissue[i]), annotated)
        normal.append(values)
        per_slide[slide] = {"normal_pixels": int(values.size), "detectors": dict(zip(detectors, used, strict=True))}
        log.info("%s: %d normal scored pixels, median fused score %.3g", slide, values.size,
                 float(np.median(values)) if values.size else float("nan"))  # fmt: skip
    tau = fusion.quantile_tau(normal, q)
    for slide, values in zip(slides, normal, strict=True):
        per_slide[slide]["normal_flagged_fraction"] = float((values > tau["tau"]).mean()) if values.size else None
    log.info("fused τ = %.4g (%s of %d normal pixels, q %g)", tau["tau"], method, tau["n"], q)
    return {"tau": tau["tau"], "method": method, "quantile": tau, "detectors": list(detectors), "slides": per_slide,
            "annotation_margin_um": margin_um}  # fmt: skip


if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])
    cfg = from_params(snakemake.params, snakemake.rule)
    f = cfg.fusion
    result = main(
        list(snakemake.params.tau_slides), list(snakemake.params.detector_names), list(snakemake.input.d2),
        list(snakemake.input.maps), list(snakemake.input.thresholds), list(snakemake.input.tissue),
        dict(snakemake.params.annotations), f.method, f.normal_quantile, f.annotation_margin_um, log,
    )  # fmt: skip
    write_json(snakemake.output[0], result | {"provenance": provenance(cfg.to_dict())})
