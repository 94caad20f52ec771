"""The dynamic threshold τ on squared Mahalanobis distances d²: a pixel is flagged when d² > τ.

Without labels τ is fitted on normal pixels only: every pixel of the patches that touch no annotation (all of an
unannotated slide), so labelled anomalies never raise τ (the original fitted it over every pixel). A patch that
overlaps an annotation is dropped whole: a per-patch score spreads the anomaly over all its pixels.
Unsupervised: τ = mean + k·std of d² (the original multiplied k by the variance; pcead-spec §6, §12.1).
Quantile: τ = the q-quantile of d² (numpy's linear interpolation when the values are kept; within one bin of the
streaming histogram otherwise).
Supervised: τ maximising F-β over labelled pixels, exactly over a stated candidate set:
  * `fbeta_curve_exact`: every distinct d² value (and one below the smallest, "flag everything") — exact over all
    thresholds, since any τ between two neighbouring values flags the same pixels;
  * `fbeta_curve_from_counts`: every edge of a streaming histogram — exact over those edges, so the optimum over all
    τ is within one bin (relative resolution of the log bins) when the pixels are too many to keep.
Ties in F-β go to the smallest τ (more recall at the same score).

With calibration.slide_standardisation "robust" each pixel is also scored by its slide's robust z,
z = (d² − median) / (1.4826 · MAD) over all the slide's pixels, and τ_z is fitted by the same three rules over the
pooled z values (`pooled_z`; docs/scoring.md "Per-slide robust standardisation").
"""

from __future__ import annotations

import numpy as np

from proganomaly.calibration.stats import Moments, StatsError, covariance, histogram_quantiles, merge_all


def unsupervised_tau(d2_moments: Moments, k: float) -> dict:
    """τ = mean + k·std of d² (sample std, ddof = 1, as the original's use_sample_covariance)."""
    if d2_moments.dim != 1:
        raise StatsError(f"expected the moments of the scalar d², got dimension {d2_moments.dim}")
    var = float(covariance(d2_moments, ddof=1)[0, 0])
    mean, std = float(d2_moments.mean[0]), float(np.sqrt(var))
    return {
        "method": "unsupervised",
        "tau": mean + k * std,
        "k": float(k),
        "mean": mean,
        "std": std,
        "var": var,
        "n": d2_moments.n,
        "rule": "tau = mean + k * std (sample std) of d2 over the normal pixels of the threshold/validation slides",
    }


def quantile_tau(q: float, d2: np.ndarray | None = None, counts=None, edges=None) -> dict:
    """τ = the q-quantile of the normal pixels' d²: exact from the values `d2` when given, else from histogram
    `counts` over `edges` (`stats.bin_counts`), linear within the bin that holds it."""
    if not 0.0 < q < 1.0:
        raise StatsError(f"calibration.normal_quantile={q} must lie strictly between 0 and 1")
    if d2 is not None:
        d2 = np.asarray(d2, np.float64).ravel()
        if d2.size == 0:
            raise StatsError("no normal pixels for the quantile threshold")
        tau, how, n = float(np.quantile(d2, q)), "exact: numpy linear quantile of every normal pixel's d2", d2.size
    else:
        if counts is None or edges is None:
            raise ValueError("quantile_tau needs the d2 values or histogram counts and edges")
        tau = float(histogram_quantiles(counts, edges, [q])[0])
        how, n = "histogram: linear within one d2 bin", int(np.asarray(counts).sum())
    return {
        "method": "quantile",
        "tau": tau,
        "q": float(q),
        "n": int(n),
        "how": how,
        "rule": "tau = q-quantile of d2 over the normal pixels of the threshold/validation slides",
    }


def normal_pixels_record(
    n_pixels: int, n_normal: int, annotated: dict, *, n_anomalous: int = 0, touching: dict | None = None
) -> dict:
    """Which pixels the unsupervised and quantile τ were fitted on, for threshold.json (`touching`: collect_d2's
    `touching_anomaly`, the patches dropped for touching an annotation and their unannotated pixels)."""
    touching = touching or {"patches": 0, "normal_pixels": 0}
    return {
        "definition": "every pixel of a patch with no annotated pixel (every patch of an unannotated slide); a patch "
        "touching an annotation is left out whole, since per-patch scores spread the anomaly over all its pixels",
        "n_pixels": int(n_pixels),
        "n_normal": int(n_normal),
        "n_excluded": int(n_pixels - n_normal),
        "n_anomalous": int(n_anomalous),
        "dropped_touching_anomaly": {k: int(touching[k]) for k in ("patches", "normal_pixels")},
        "annotated_slides": sorted(annotated),
    }


def fbeta(tp, fp, fn, beta: float) -> np.ndarray:
    """F-β = (1+β²)·TP / ((1+β²)·TP + β²·FN + FP), 0 where nothing is flagged correctly."""
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tp > 0, (1 + b2) * tp / np.where(den > 0, den, 1), 0.0)


def _curve(thresholds, tp, fp, n_pos, beta) -> dict:
    tp, fp = np.asarray(tp, np.int64), np.asarray(fp, np.int64)
    fn = n_pos - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        recall = tp / n_pos if n_pos else np.full(tp.shape, np.nan)
    return {
        "thresholds": np.asarray(thresholds, np.float64),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f": fbeta(tp, fp, fn, beta),
    }


def fbeta_curve_exact(d2: np.ndarray, labels: np.ndarray, beta: float) -> dict:
    """F-β at every candidate τ: each distinct d² value, plus one just below the smallest (flags every pixel)."""
    d2 = np.asarray(d2, np.float32).ravel()
    labels = np.asarray(labels, bool).ravel()
    if d2.shape != labels.shape:
        raise ValueError(f"d2 ({d2.shape}) and labels ({labels.shape}) differ in size")
    if d2.size == 0:
        raise StatsError("no labelled pixels for the supervised threshold")
    order = np.argsort(d2, kind="stable")
    v, lab = d2[order], labels[order]
    values, first = np.unique(v, return_index=True)
    # flagged by τ = values[j] are the pixels after the last occurrence of values[j] in the sorted order
    pos_after = np.concatenate([np.cumsum(lab[::-1])[::-1], [0]])
    start_next = np.append(first[1:], v.size)
    tp = pos_after[start_next]
    fp = (v.size - start_next) - tp
    below = values[0] - max(np.float32(1), abs(values[0]))  # any τ below the smallest flags everything
    thresholds = np.concatenate([[below], values])
    tp = np.concatenate([[pos_after[0]], tp])
    fp = np.concatenate([[v.size - pos_after[0]], fp])
    return _curve(thresholds, tp, fp, int(lab.sum()), beta)


def fbeta_curve_from_counts(pos_counts, neg_counts, edges, beta: float) -> dict:
    """F-β at every histogram edge from `stats.bin_counts`-style counts of positive and negative pixels."""
    pos, neg = np.asarray(pos_counts, np.int64), np.asarray(neg_counts, np.int64)
    if pos.shape != neg.shape or pos.size != len(edges) + 1:
        raise ValueError(f"counts must have len(edges) + 1 = {len(edges) + 1} entries")
    # τ = edges[j] flags bins j+1 … end, i.e. all pixels with d² > edges[j]
    tp = np.cumsum(pos[::-1])[::-1][1:]
    fp = np.cumsum(neg[::-1])[::-1][1:]
    return _curve(np.asarray(edges, np.float64), tp, fp, int(pos.sum()), beta)


def best_threshold(curve: dict, beta: float, how: str) -> dict:
    f = curve["f"]
    i = int(np.argmax(f))  # first maximum: thresholds ascend, so ties go to the smallest τ
    return {
        "method": "supervised",
        "tau": float(curve["thresholds"][i]),
        "f_beta": float(f[i]),
        "beta": float(beta),
        "precision": float(curve["precision"][i]),
        "recall": float(curve["recall"][i]),
        "tp": int(curve["tp"][i]),
        "fp": int(curve["fp"][i]),
        "fn": int(curve["fn"][i]),
        "n_positive": int(curve["tp"][i] + curve["fn"][i]),
        "n_labelled": int(curve["tp"][0] + curve["fp"][0] + curve["fn"][0]),
        "candidates": how,
    }


def curve_record(curve: dict, max_points: int = 400) -> dict:
    """The F-β curve thinned for JSON: evenly spaced in rank, always keeping the best point."""
    n = curve["thresholds"].size
    keep = np.unique(
        np.concatenate([np.linspace(0, n - 1, min(n, max_points)).round().astype(int), [int(np.argmax(curve["f"]))]])
    )
    return {
        k: [None if (isinstance(x, float) and x != x) else x for x in np.asarray(v)[keep].tolist()]
        for k, v in curve.items()
    }


# ------------------------------------------------------------------------- per-slide robust standardisation

# 1.4826 · MAD estimates the standard deviation of a normal distribution: z is in "robust standard deviations".
MAD_SCALE = 1.4826
SLIDE_STANDARDISATION = ("none", "robust")


def histogram_cdf(counts, edges, x) -> np.ndarray:
    """How many values are ≤ `x` by the histogram's piecewise-linear model (the one `histogram_quantiles` inverts):
    uniform within each bin, the first bin (-inf, e0] a point mass at e0, the open last bin one at the last edge."""
    counts = np.asarray(counts, np.float64)
    below = np.cumsum(counts)[:-1]  # values ≤ edges[i]
    return np.interp(np.asarray(x, np.float64), np.asarray(edges, np.float64), below, left=0.0, right=counts.sum())


def histogram_median_mad(counts, edges, iterations: int = 200) -> tuple[float, float]:
    """Median and MAD (median absolute deviation from the median) of the values a `bin_counts` histogram holds.

    Both are accurate to about one bin where they are read: the median to the bin holding it, the MAD to the bins at
    median ± MAD (log bins: 2.3 % of d² there at 100 per decade; linear interpolation within the bin is usually far
    closer for a smooth distribution). The MAD solves CDF(m + t) − CDF(m − t) = n/2 by bisection on the same model.
    """
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total <= 0:
        raise StatsError("an empty histogram has no median")
    median = float(histogram_quantiles(counts, edges, [0.5])[0])
    lo, hi = 0.0, float(max(abs(edges[-1] - median), abs(median - edges[0]))) + 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        inside = histogram_cdf(counts, edges, median + mid) - histogram_cdf(counts, edges, median - mid)
        lo, hi = (lo, mid) if inside >= 0.5 * total else (mid, hi)
    return median, hi


def z_edges(per_decade: int) -> np.ndarray:
    """Symmetric-log bin edges for robust z values: ±[1e-3, 1e6] (1e4 below 0, as d² ≥ 0 bounds z from below) at
    `per_decade` edges per decade, and 0; the same relative resolution in |z| as the d² bins have in d²."""
    pos = np.geomspace(1e-3, 1e6, 9 * per_decade + 1)
    neg = -np.geomspace(1e-3, 1e4, 7 * per_decade + 1)[::-1]
    return np.concatenate([neg, [0.0], pos])


def z_counts(counts, edges, median: float, scale: float, zedges) -> np.ndarray:
    """A slide's d² histogram re-binned on the z edges, z = (d² − median) / scale, by its piecewise-linear CDF
    (counts rounded on the cumulative, so they stay whole and sum to the slide's count)."""
    counts = np.asarray(counts, np.int64)
    cum = np.rint(histogram_cdf(counts, edges, median + scale * np.asarray(zedges, np.float64))).astype(np.int64)
    return np.diff(np.concatenate([[0], cum, [int(counts.sum())]]))


def standardised_moments(m: Moments, median: float, scale: float) -> Moments:
    """The exact moments of z = (d² − median) / scale from those of d² (an affine map of every value)."""
    return Moments(m.n, (m.mean - median) / scale, m.m2 / (scale * scale))


def robust_scale(counts, edges, slide: str) -> dict:
    """{"median", "mad", "scale" = MAD_SCALE · MAD, "n_pixels"} of one slide's d² histogram over all its pixels;
    StatsError naming the slide when the MAD is below the histogram's resolution (z would be undefined)."""
    median, mad = histogram_median_mad(counts, edges)
    if not mad > float(edges[0]):
        raise StatsError(
            f"slide {slide}: half its pixels have the same d² (MAD {mad:.3g} is below the histogram's resolution), so "
            "it cannot be standardised; use calibration.slide_standardisation: none, or a scorer with more than one "
            "channel (a one-sided single channel gives d² = 0 on half the pixels)"
        )
    return {"median": median, "mad": mad, "scale": MAD_SCALE * mad, "n_pixels": int(np.asarray(counts).sum())}


def pooled_z(slides: dict, edges, per_decade: int) -> dict:
    """Per-slide robust location and scale and the pooled z histograms of collect_d2's `slides`.

    Every slide is standardised by the median and MAD of ALL its pixels (anomalies included: at inference nothing is
    known of annotations, and anomalies are a minority of a slide's tissue, so the median barely moves). Returns
    {"zedges", "slides": {slide: robust_scale record}, "normal_counts", "pos_counts", "neg_counts" (pooled over the
    z edges), "normal_moments" (exact moments of the normal pixels' z, or None)}.
    """
    zedges = z_edges(per_decade)
    n_bins = len(zedges) + 1
    pooled = {k: np.zeros(n_bins, np.int64) for k in ("normal_counts", "pos_counts", "neg_counts")}
    records, moments = {}, []
    for slide in sorted(slides):
        acc = slides[slide]
        rec = robust_scale(acc["counts"], edges, slide)
        records[slide] = rec
        for key in pooled:
            if np.asarray(acc[key]).sum():
                pooled[key] += z_counts(acc[key], edges, rec["median"], rec["scale"], zedges)
        if acc.get("normal_moments") is not None:
            moments.append(standardised_moments(acc["normal_moments"], rec["median"], rec["scale"]))
    return {"zedges": zedges, "slides": records, "normal_moments": merge_all(moments) if moments else None, **pooled}


def exceeds(d2, median: float, scale: float, tau_z: float) -> np.ndarray:
    """z > τ_z for z = (d² − median) / scale, as d² > median + τ_z · scale (no division, so a zero scale flags what
    lies above the median); False where d² is NaN."""
    with np.errstate(invalid="ignore"):
        return np.asarray(d2, np.float64) > median + tau_z * scale


def tau_z_of(record: dict, source: str) -> float:
    """τ_z from a threshold.json or a model card (both carry it at the top level), or a ValueError naming the file
    and the fix when it was fitted without robust standardisation."""
    method = (record.get("slide_standardisation") or {}).get("method", "none")
    tau_z = record.get("tau_z")
    if method != "robust" or tau_z is None:
        raise ValueError(
            f"calibration.slide_standardisation is 'robust' but {source} has no tau_z (its τ was fitted with "
            f"slide_standardisation {method!r}): rerun fit_threshold (and export_model) with "
            "calibration.slide_standardisation: robust, or screen with a detector exported that way"
        )
    return float(tau_z)
