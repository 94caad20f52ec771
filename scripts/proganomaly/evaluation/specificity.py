"""How much normal tissue the detector flags: the numbers that say whether "normal means normal".

Per slide and pooled per split (pool_metrics' "specificity" object):
- normal_tissue_in_polygons: FP area / normal tissue area (normal = tissue outside every annotation) of the
  predicted polygons at the operating point;
- fp_area_mm2 (per slide) and fp_area_mm2_per_mm2 = FP area / tissue area at the operating point;
- normal_tissue_flagged: share of normal tissue whose pixel flag (flags.tif, the per-pixel τ decision) is set;
- kde_above_0.25: share of normal tissue with the KDE heat map above 0.25 (tissue_kde_above_0.25: of all tissue);
- lesion_sensitivity: lesions hit at the operating point / lesions (evaluation.lesions);
- f1_flag_everything = 2p / (1 + p), p the anomalous share of tissue: the F1 of one polygon covering all tissue,
  the floor any F1 has to beat (printed beside every F1).
Pixel shares count map pixels whose centre lies in tissue (NaN in a map is "not flagged"); areas are in µm², so
slides of different resolution pool by summing areas. Pooled over normal-only slides for the headline numbers
(a slide whose annotation file has zero features), and over the normal tissue of every slide in "..._all".
"""

from __future__ import annotations

import math

import numpy as np

KDE_LEVEL = 0.25
KDE_KEY = f"kde_above_{KDE_LEVEL:g}"
# At the operating point, polygons covering more than this share of a slide's tissue get a warning.
COVER_WARNING = 0.5
PIXEL_AREAS = ("tissue", "normal", "normal_flagged", "normal_kde_above", "tissue_kde_above")


def _ratio(num, den) -> float | None:
    return float(num) / float(den) if den and den > 0 and math.isfinite(float(num)) else None


def flag_everything_f1(anomalous: float, tissue: float) -> float | None:
    """F1 of predicting all tissue anomalous: 2p / (1 + p) with p = anomalous / tissue (None without tissue)."""
    p = _ratio(anomalous, tissue)
    return None if p is None else 2 * p / (1 + p)


def pixel_areas(flags: np.ndarray, kde: np.ndarray, tissue: np.ndarray, annotated: np.ndarray, pixel_um2: float):
    """{name: µm²} of PIXEL_AREAS on one map grid: boolean tissue and annotated masks, flags and KDE maps (NaN
    counts as not flagged / not above)."""
    normal = tissue & ~annotated
    with np.errstate(invalid="ignore"):
        flagged = np.asarray(flags) > 0
        above = np.asarray(kde) > KDE_LEVEL
    counts = {
        "tissue": tissue.sum(),
        "normal": normal.sum(),
        "normal_flagged": (normal & flagged).sum(),
        "normal_kde_above": (normal & above).sum(),
        "tissue_kde_above": (tissue & above).sum(),
    }
    return {k: float(v) * pixel_um2 for k, v in counts.items()}


def pixel_fractions(areas: dict) -> dict:
    """The shares of `pixel_areas` (None where the denominator is empty)."""
    return {
        "normal_tissue_flagged": _ratio(areas["normal_flagged"], areas["normal"]),
        KDE_KEY: _ratio(areas["normal_kde_above"], areas["normal"]),
        f"tissue_{KDE_KEY}": _ratio(areas["tissue_kde_above"], areas["tissue"]),
    }


def point_areas(record: dict) -> dict:
    """µm² areas of an at-operating-point record's "all" entry (export_predictions / operating.point_record)."""
    tp, fp, fn, tn = (float(record.get(f"{a}_um2") or 0.0) for a in ("true_positive", "false_positive",
                                                                      "false_negative", "true_negative"))  # fmt: skip
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def point_summary(areas: dict) -> dict:
    """Specificity numbers of a cell from its µm² areas {tp, fp, fn, tn} (one slide, or summed over slides)."""
    tissue = sum(areas.values())
    positives = areas["tp"] + areas["fn"]
    undefined = positives <= 0
    return {
        "normal_tissue_in_polygons": _ratio(areas["fp"], areas["fp"] + areas["tn"]),
        "fp_area_mm2": areas["fp"] / 1e6,
        "fp_area_mm2_per_mm2": _ratio(areas["fp"], tissue),
        "predicted_tissue_fraction": _ratio(areas["tp"] + areas["fp"], tissue),
        # Without anomalous tissue recall and F1 are undefined (null), never 0.
        "f1_at_operating_point": None
        if undefined
        else _ratio(2 * areas["tp"], 2 * areas["tp"] + areas["fp"] + areas["fn"]),
        "f1_flag_everything": None if undefined else flag_everything_f1(positives, tissue),
    }


def cover_warning(areas: dict, slide: str) -> str | None:
    """A warning when the predicted polygons cover more than COVER_WARNING of the tissue, else None."""
    share = point_summary(areas)["predicted_tissue_fraction"]
    if share is None or share <= COVER_WARNING:
        return None
    return (
        f"{slide}: the predicted polygons at the operating point cover {share:.0%} of the tissue (more than "
        f"{COVER_WARNING:.0%}); the operating point flags most of the slide, so its polygons are not a detection"
    )


def sum_areas(records: list[dict], keys) -> dict:
    return {k: float(sum(r[k] for r in records)) for k in keys}


SUMMARY_KEYS = ("normal_tissue_in_polygons", "normal_tissue_flagged", KDE_KEY, "fp_area_mm2_per_mm2",
                "lesion_sensitivity", "f1_at_operating_point", "f1_flag_everything", "best_f1")  # fmt: skip


def slide_summary(metrics_json: dict, at_point: dict) -> dict:
    """One slide's specificity numbers from its metrics.json (evaluate_slide) and at_operating_point.json."""
    px = metrics_json.get("specificity_pixels") or {}
    point = at_point.get("specificity") or point_summary(point_areas(at_point["all"]))
    les = at_point.get("lesions") or {}
    best = metrics_json.get("best_f1")
    return {
        "normal_only": bool(metrics_json.get("normal_only", False)),
        "normal_tissue_in_polygons": point["normal_tissue_in_polygons"],
        "normal_tissue_flagged": px.get("normal_tissue_flagged"),
        KDE_KEY: px.get(KDE_KEY),
        "fp_area_mm2": point["fp_area_mm2"],
        "fp_area_mm2_per_mm2": point["fp_area_mm2_per_mm2"],
        "predicted_tissue_fraction": point["predicted_tissue_fraction"],
        "lesion_sensitivity": les.get("sensitivity"),
        "lesions": les.get("lesions", 0),
        "lesions_hit": les.get("hit", 0),
        "f1_at_operating_point": point["f1_at_operating_point"],
        "f1_flag_everything": point["f1_flag_everything"],
        # The slide's own best cell: an oracle, null on a normal-only slide.
        "best_f1": best["value"] if best else None,
        "warning": at_point.get("warning"),
    }


def split_summary(per_slide: list[dict], at_points: list[dict], best_f1: float | None, froc: dict) -> dict:
    """The pooled "specificity" object of a split (pool_metrics): headline shares over its normal-only slides,
    "..._all" over the normal tissue of all its slides, FP area, lesions and F1 over all its slides."""
    slides = [m["slide_id"] for m in per_slide]
    normal = [i for i, m in enumerate(per_slide) if m.get("normal_only")]
    point = [point_areas(a["all"]) for a in at_points]
    pixels = [(m.get("specificity_pixels") or {}).get("areas_um2") for m in per_slide]

    def polygons(idx):
        a = sum_areas([point[i] for i in idx], ("tp", "fp", "fn", "tn")) if idx else None
        return point_summary(a)["normal_tissue_in_polygons"] if a else None

    def shares(idx):
        have = [pixels[i] for i in idx if pixels[i]]
        return pixel_fractions(sum_areas(have, PIXEL_AREAS)) if have else dict.fromkeys(pixel_fractions(
            dict.fromkeys(PIXEL_AREAS, 0.0)))  # fmt: skip

    everything = range(len(per_slide))
    total = point_summary(sum_areas(point, ("tp", "fp", "fn", "tn"))) if point else {}
    lesion_n = sum((a.get("lesions") or {}).get("lesions", 0) for a in at_points)
    lesion_hit = sum((a.get("lesions") or {}).get("hit", 0) for a in at_points)
    normal_shares, all_shares = shares(normal), shares(everything)
    return {
        "definition": "normal_tissue_in_polygons, normal_tissue_flagged and kde_above_0.25: shares of the normal "
        "tissue of the normal-only slides (null without any; '_all': of the normal tissue of every slide); "
        "fp_area_mm2_per_mm2: FP area / tissue area at the operating point, all slides; lesion_sensitivity: lesions "
        "hit / lesions at the operating point; f1_flag_everything = 2p / (1 + p), p the anomalous share of tissue; "
        "best_f1: the split's own best pooled cell (an oracle). Areas summed over slides (µm²).",
        "normal_only_slides": [slides[i] for i in normal],
        "normal_tissue_in_polygons": polygons(normal),
        "normal_tissue_flagged": normal_shares["normal_tissue_flagged"],
        KDE_KEY: normal_shares[KDE_KEY],
        "normal_tissue_in_polygons_all": polygons(list(everything)),
        "normal_tissue_flagged_all": all_shares["normal_tissue_flagged"],
        f"{KDE_KEY}_all": all_shares[KDE_KEY],
        "fp_area_mm2_per_mm2": total.get("fp_area_mm2_per_mm2"),
        "fp_area_mm2_per_slide": total.get("fp_area_mm2", 0.0) / len(point) if point else None,
        "lesion_sensitivity": lesion_hit / lesion_n if lesion_n else None,
        "lesions": lesion_n,
        "lesions_hit": lesion_hit,
        "lesion_sensitivity_per": _lesions_per_part(at_points),
        "f1_at_operating_point": total.get("f1_at_operating_point"),
        "f1_flag_everything": total.get("f1_flag_everything"),
        "best_f1": best_f1,
        "warnings": [a["warning"] for a in at_points if a.get("warning")],
        "per_slide": {s: slide_summary(m, a) for s, m, a in zip(slides, per_slide, at_points, strict=True)},
        "froc": froc,
    }


def _lesions_per_part(at_points: list[dict]) -> dict:
    """{class|group: {name: {lesions, hit, sensitivity}}} summed over the slides' at-operating-point records."""
    out: dict = {}
    for at in at_points:
        for level in ("class", "group"):
            for name, r in ((at.get("lesions") or {}).get(level) or {}).items():
                acc = out.setdefault(level, {}).setdefault(name, {"lesions": 0, "hit": 0})
                acc["lesions"] += r["lesions"]
                acc["hit"] += r["hit"]
    for named in out.values():
        for r in named.values():
            r["sensitivity"] = r["hit"] / r["lesions"] if r["lesions"] else None
    return out
