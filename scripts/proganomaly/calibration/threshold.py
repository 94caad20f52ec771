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
"""

from __future__ import annotations

import numpy as np

from proganomaly.calibration.stats import Moments, StatsError, covariance, histogram_quantiles


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
