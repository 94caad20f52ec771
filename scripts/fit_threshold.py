"""Rule fit_threshold: the dynamic threshold τ on d² from the threshold and validation slides.

Streams d² = yᵀ Σ⁻¹ y, y = e − μ (clipped per channel to its anomalous side with the error distribution's
one-sided "directions"), of every pixel of every patch of those slides. Always computes, over the normal pixels
(every pixel of the patches that touch no annotation: a per-patch score spreads an anomaly over its whole patch),
the unsupervised τ = mean + k·std and the quantile τ; when slides have annotations, also the supervised τ
maximising F-β over all their pixels (labels: pixel centre inside an annotation polygon). `calibration.threshold_method` picks the one that is exported. Writes
results/detectors/{detector}/calibration/threshold.json with all three, the pixel counts they used, d² quantiles and histogram (also by
label), and the F-β curve.

With `calibration.slide_standardisation: robust` also τ_z, on the per-slide robust z = (d² − median) / (1.4826 · MAD)
(median and MAD of each slide's d² over ALL its pixels, from its histogram: accurate to about one d² bin), by the same
method over the pooled z values of the same pixels; threshold.json gets "tau_z" and "slide_standardisation" (per-slide
median and MAD, the three τ_z, the z histogram). "tau" stays the raw τ on d² (the SavedModel's own flags).

With `resources.gpus.calibration` > 1 every batch is split over that many GPUs (MirroredStrategy), as in
fit_error_distribution; moments and histogram counts are merged exactly on the host.
"""

import json
import math
from pathlib import Path

import numpy as np

from proganomaly.calibration import errors, stats, threshold
from proganomaly.common.devices import replica_strategy, scope
from proganomaly.common.runlog import Progress, provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.data.geojson import read_polygons
from proganomaly.data.patch_labels import extent_lookup, union_of
from proganomaly.data.records import count_examples, make_dataset, read_manifest
from proganomaly.model.io import load_trained
from proganomaly.scoring import scorer_from_record

log = setup_logging(snakemake.log[0])
cfg = from_params(snakemake.params, snakemake.rule)
cc = cfg.calibration
manifests = list(snakemake.input.manifests)
annotations = dict(zip(snakemake.params.annotated, snakemake.input.annotations, strict=True))
if not manifests:
    raise SystemExit(
        "no slide of split 'threshold' or 'validation' in the slide sheet: add one (config/slides.tsv) to fit τ"
    )
if cc.threshold_method == "supervised" and not annotations:
    raise SystemExit(
        "calibration.threshold_method is 'supervised' but no threshold or validation slide has annotations: "
        "add an 'annotations' GeoJSON for one in the sheet, or use 'unsupervised' or 'quantile'"
    )

ed = json.loads(Path(snakemake.input.error_distribution).read_text())
if ed.get("one_sided") != cc.one_sided:
    raise SystemExit(
        f"{snakemake.input.error_distribution} was fitted with calibration.one_sided={ed.get('one_sided')}, the config "
        f"has {cc.one_sided}: rerun fit_error_distribution"
    )
gauss = {"mean": np.asarray(ed["mean"]), "precision": np.asarray(ed["precision"]), "directions": ed.get("directions")}
strategy = replica_strategy(cfg.resources.gpus.calibration, "resources.gpus.calibration")
with scope(strategy):  # weights mirrored on every GPU
    trained = load_trained(Path(snakemake.input.model_json).parent)
    scorer = scorer_from_record(
        ed, trained, expected=cc.scorer, source=snakemake.input.error_distribution, settings=cfg.scoring
    )
size = int(trained.patch_size_px)
if size != ed["patch_size_px"]:
    raise SystemExit(
        f"{snakemake.input.error_distribution} was fitted at {ed['patch_size_px']} px, the model is {size} px"
    )

labeller, repairs = None, []
if annotations:
    classes = set(cc.annotation_classes) if cc.annotation_classes is not None else None
    geoms = {}
    for slide, path in annotations.items():
        polys, fixed = read_polygons(path, classes)
        repairs += fixed
        geoms[slide] = union_of(polys)
        log.info("%s: %d annotation polygon(s) from %s", slide, len(polys), path)
    for r in repairs:
        log.warning(r)
    tables = {read_manifest(m)["slide_id"]: t for m, t in zip(manifests, snakemake.input.patch_tables, strict=True)}
    labeller = errors.make_labeller(extent_lookup({s: tables[s] for s in geoms}), geoms, size)

n_patches = count_examples(manifests, size)
if n_patches == 0:
    raise SystemExit(f"the threshold/validation slides {manifests} have no tissue patches; check their tiling QC")
edges = stats.log_edges(*errors.D2_RANGE, cc.d2_bins_per_decade)
progress = Progress(math.ceil(n_patches / cc.batch_size), "fit_threshold", "batches", logger=log)
out = errors.collect_d2(
    scorer,
    make_dataset(manifests, size, batch_size=cc.batch_size, with_meta=True),
    gauss,
    edges,
    labeller=labeller,
    max_exact_pixels=cc.supervised_max_exact_pixels,
    strategy=strategy,
    progress=progress,
    jit_compile=cc.jit_compile,
    border_px=cc.border_px,
    per_slide=cc.slide_standardisation == "robust",
)

normal = threshold.normal_pixels_record(
    out["moments"].n,
    out["normal_counts"].sum(),
    annotations,
    n_anomalous=out["n_anomalous_pixels"],
    touching=out["touching_anomaly"],
)
log.info("normal pixels: %d of %d (%d inside annotations and %d more of %d patches touching them left out)",
         normal["n_normal"], normal["n_pixels"], normal["n_anomalous"],
         normal["dropped_touching_anomaly"]["normal_pixels"], normal["dropped_touching_anomaly"]["patches"])  # fmt: skip
if out["normal_moments"] is None:
    raise SystemExit(
        "every pixel of the threshold/validation slides lies inside an annotation, so no normal pixel is left to fit τ "
        "on: add a slide with normal tissue or annotate only the anomalies"
    )
normal_counts = out["normal_counts"]


def flagged_fraction(tau: float) -> float:
    return float(normal_counts[np.searchsorted(edges, tau, side="right") :].sum() / normal_counts.sum())


unsup = threshold.unsupervised_tau(out["normal_moments"], cc.k_std)
quant = threshold.quantile_tau(cc.normal_quantile, out.get("normal_d2"), normal_counts, edges)
for rec in (unsup, quant):
    rec["flagged_fraction"] = flagged_fraction(rec["tau"])
    rec["flagged_fraction_note"] = "of normal pixels; upper bound within one d2 bin (the bin holding tau and above)"
log.info("unsupervised τ = %.6g (mean %.6g + %g · std %.6g)", unsup["tau"], unsup["mean"], cc.k_std, unsup["std"])
log.info("quantile τ = %.6g (%g-quantile of normal d2; %s)", quant["tau"], quant["q"], quant["how"])
result = {
    "definition": "a pixel is flagged when d2 > tau; d2 = y^T precision y, y = e - mean clipped per channel to its "
    "anomalous side (directions) with the fitted Gaussian",
    "scorer": scorer.name,
    "one_sided": ed.get("one_sided"),
    "directions": ed.get("directions"),
    "n_patches": n_patches,
    "n_pixels": out["moments"].n,
    "normal_pixels": normal,
    "unsupervised": unsup,
    "quantile": quant,
    "supervised": None,
    "d2_histogram": stats.histogram_record(out["counts"], edges),
    "d2_histogram_normal": stats.histogram_record(normal_counts, edges),
}
if labeller is not None and out["n_labelled"]:
    if "d2" in out:
        curve, how = threshold.fbeta_curve_exact(out["d2"], out["labels"], cc.f_beta), "exact: every distinct d2 value"
    else:
        curve = threshold.fbeta_curve_from_counts(out["pos_counts"], out["neg_counts"], edges, cc.f_beta)
        how = f"histogram edges ({cc.d2_bins_per_decade} per decade): optimum within one bin"
    sup = threshold.best_threshold(curve, cc.f_beta, how)
    sup["curve"] = threshold.curve_record(curve)
    sup["annotations"] = annotations
    sup["annotation_repairs"] = repairs
    result["supervised"] = sup
    result["d2_histogram_by_label"] = {
        "anomalous": stats.histogram_record(out["pos_counts"], edges) if out["pos_counts"].sum() else None,
        "normal": stats.histogram_record(out["neg_counts"], edges) if out["neg_counts"].sum() else None,
    }
    log.info(
        "supervised τ = %.6g (F-%g %.4f, precision %.4f, recall %.4f; %s)",
        sup["tau"],
        cc.f_beta,
        sup["f_beta"],
        sup["precision"],
        sup["recall"],
        how,
    )
elif cc.threshold_method == "supervised":
    raise SystemExit("no labelled pixels: the annotated threshold/validation slides have no patches in the records")


def standardised(out: dict) -> dict:
    """The robust-z τ_z by every method (supervised where pixels are labelled) and each slide's median and MAD."""
    try:
        pz = threshold.pooled_z(out["slides"], edges, cc.d2_bins_per_decade)
    except stats.StatsError as exc:
        raise SystemExit(f"calibration.slide_standardisation robust: {exc}") from None
    zedges, zn = pz["zedges"], pz["normal_counts"]
    if pz["normal_moments"] is None or not zn.sum():
        raise SystemExit("no normal pixels to fit τ_z on")

    def z_flagged(t: float) -> float:
        return float(zn[np.searchsorted(zedges, t, side="right") :].sum() / zn.sum())

    rec = {
        "method": "robust",
        "definition": "a pixel is flagged when z > tau_z, z = (d2 - median) / (mad_scale * MAD); median and MAD of d2 "
        "over every scored pixel of the pixel's own slide (anomalies included)",
        "mad_scale": threshold.MAD_SCALE,
        "how": "per-slide median and MAD from the slide's d2 histogram (accurate to about one d2 bin); each slide's "
        "histogram re-binned on symmetric-log z edges by its piecewise-linear CDF; unsupervised tau_z from the exact "
        "moments of z, quantile and supervised tau_z from the pooled z histograms (within one bin)",
        "slides": pz["slides"],
        "unsupervised": threshold.unsupervised_tau(pz["normal_moments"], cc.k_std),
        "quantile": threshold.quantile_tau(cc.normal_quantile, None, zn, zedges),
        "supervised": None,
    }
    rec["unsupervised"]["rule"] = "tau_z = mean + k * std (sample std) of z over the normal pixels"
    rec["quantile"]["rule"] = "tau_z = q-quantile of z over the normal pixels"
    if out["n_labelled"]:
        curve = threshold.fbeta_curve_from_counts(pz["pos_counts"], pz["neg_counts"], zedges, cc.f_beta)
        sup = threshold.best_threshold(curve, cc.f_beta, "z histogram edges: optimum within one bin")
        sup["curve"] = threshold.curve_record(curve)
        rec["supervised"] = sup
    for name in ("unsupervised", "quantile", "supervised"):
        if rec[name] is not None:
            rec[name]["flagged_fraction"] = z_flagged(rec[name]["tau"])
    tau_z = float(rec[cc.threshold_method]["tau"])
    rec["tau_z"] = tau_z
    for slide, r in rec["slides"].items():
        normal = out["slides"][slide]["normal_counts"]
        n = int(normal.sum())
        r["tau_slide"] = r["median"] + tau_z * r["scale"]  # the raw d² threshold this slide's τ_z amounts to
        r["normal_flagged_fraction"] = (
            float(1.0 - threshold.histogram_cdf(normal, edges, r["tau_slide"]) / n) if n else None
        )
    rec["z_histogram_normal"] = stats.histogram_record(zn, zedges)
    return rec


chosen = result[cc.threshold_method]
result["method"] = cc.threshold_method
result["tau"] = float(np.float32(chosen["tau"]))
result["slide_standardisation"] = {"method": "none"}
result["tau_z"] = None
if cc.slide_standardisation == "robust":
    result["slide_standardisation"] = standardised(out)
    result["tau_z"] = result["slide_standardisation"]["tau_z"]
    for slide, r in result["slide_standardisation"]["slides"].items():
        log.info("%s: median d² %.6g, MAD %.6g → its own d² threshold %.6g", slide, r["median"], r["mad"],
                 r["tau_slide"])  # fmt: skip
    log.info("τ_z = %.6g (%s, robust per-slide standardisation)", result["tau_z"], cc.threshold_method)
result["provenance"] = provenance(
    cfg.to_dict(),
    inputs={
        "error_distribution": snakemake.input.error_distribution,
        "manifests": manifests,
        "annotations": annotations,
    },
)
write_json(snakemake.output.json, result)
log.info("τ = %.6g (%s) → %s", result["tau"], cc.threshold_method, snakemake.output.json)
