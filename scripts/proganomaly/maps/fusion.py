"""Fusion of several detectors' per-pixel scores on the shared map grid.

Each detector's score (d² or its slide's robust z) means something only against that detector's own normal
distribution, so scores are not added; each is first turned into an upper-tail probability under the detector's
normal pixels (`tail_probability`, from the histogram fit_threshold keeps of them), then the probabilities are
combined (`FUSERS`):

* ``fisher``: X = −2 Σ ln pᵢ, χ² with 2k degrees of freedom under independence; evidence from several moderately
  unusual detectors adds up.
* ``min_p``: Tippett's 1 − (1 − min pᵢ)^k; one very unusual detector is enough, and a detector that is blind to an
  anomaly cannot dilute another that sees it.

The fused score is −log₁₀ p (0 = typical, 3 = one in a thousand), one map on which τ and the operating point are
fitted like on any detector's score. Pixels a detector did not score (NaN) combine the detectors that did; NaN
where none did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

from proganomaly.calibration.stats import histogram_quantiles


class FusionError(ValueError):
    """Scores or reference histograms that cannot be fused."""


# Above the (1 − TAIL_FRACTION) quantile of a detector's normal pixels the p-value follows an exponential tail fitted
# to them (their mean excess over that quantile) instead of the histogram: the histogram ends at the largest normal
# pixel, so every stronger anomaly would tie at p = 1/(n + 1), and a τ fitted on the fused score could sit on that
# plateau and flag nothing. The exponential is the tail of a χ²-like d², and of its robust z, to first order.
TAIL_FRACTION = 0.01
# Fewer normal pixels than this above the quantile give no usable mean excess: the histogram alone is used.
MIN_TAIL_PIXELS = 20


def _survival(x: np.ndarray, counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """n · P(X > x) from the histogram: linear CDF within a bin, the first bin a point mass at e0 and the open last
    bin one at e_last (the histogram's own conventions)."""
    above = counts.sum() - np.cumsum(counts)  # normal pixels in bins after bin j
    j = np.searchsorted(edges, x, side="left")  # the bin (e_{j-1}, e_j] that holds x
    inner = (j > 0) & (j < edges.size)
    surv = np.where(j == 0, counts.sum() - counts[0] * (x >= edges[0]), above[j])  # e0's mass counts below e0 only
    jj = j[inner]
    lo, hi = edges[jj - 1], edges[jj]
    surv[inner] += counts[jj] * (hi - x[inner]) / (hi - lo)
    surv[j == edges.size] = 0.0  # beyond the point mass at e_last
    return surv


def mean_excess(counts: np.ndarray, edges: np.ndarray, u: float) -> tuple[float, float]:
    """(mass above u, mean excess over u) of the histogram, each bin's mass above u at the centre of that part."""
    mass = excess = 0.0
    for j in range(1, edges.size):
        lo, hi = max(edges[j - 1], u), edges[j]
        if hi > lo and counts[j]:
            part = counts[j] * (hi - lo) / (edges[j] - edges[j - 1])
            mass, excess = mass + part, excess + part * ((lo + hi) / 2 - u)
    for value, c in ((edges[0], counts[0]), (edges[-1], counts[-1])):
        if value > u and c:
            mass, excess = mass + c, excess + c * (value - u)
    return mass, (excess / mass if mass else 0.0)


def tail_probability(
    values: np.ndarray, counts: np.ndarray, edges: np.ndarray, tail: float | None = TAIL_FRACTION
) -> np.ndarray:
    """P(X > value) under a detector's normal pixels, given as `stats.bin_counts` counts over `edges`.

    Below the (1 − tail) quantile u of the normal pixels: the histogram, (n·S + 1) / (n + 1), so never 0. Above u:
    p(u) · exp(−(value − u) / β), β the normal pixels' mean excess over u, continuous at u and falling without
    plateaus beyond the largest normal pixel. `tail` None (or too few normal pixels above u): the histogram
    everywhere, so a value beyond every normal pixel gets 1/(n + 1). NaN stays NaN.
    """
    counts = np.asarray(counts, np.float64)
    edges = np.asarray(edges, np.float64)
    if counts.ndim != 1 or edges.ndim != 1 or counts.size != edges.size + 1:
        raise FusionError(f"{counts.size} counts need {counts.size - 1} edges, got {edges.size}")
    if edges.size < 1 or np.any(np.diff(edges) <= 0):
        raise FusionError("histogram edges must be strictly increasing")
    n = counts.sum()
    if n <= 0:
        raise FusionError("the reference histogram is empty: no normal pixels to compare with")
    v = np.asarray(values, np.float64)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    x = v[ok]
    p = (_survival(x, counts, edges) + 1.0) / (n + 1.0)
    if tail is not None:
        if not 0.0 < tail < 1.0:
            raise FusionError(f"tail fraction {tail} must lie strictly between 0 and 1")
        u = float(histogram_quantiles(counts, edges, [1.0 - tail])[0])
        mass, beta = mean_excess(counts, edges, u)
        if mass >= MIN_TAIL_PIXELS and beta > 0:
            p_u = (_survival(np.array([u]), counts, edges)[0] + 1.0) / (n + 1.0)
            beyond = x > u
            p[beyond] = p_u * np.exp(-(x[beyond] - u) / beta)
    out[ok] = np.maximum(p, np.finfo(np.float64).tiny)  # exp underflow must not read as "impossible"
    return out


def _stack(pvalues: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not pvalues:
        raise FusionError("nothing to fuse: no detector's p-values")
    shapes = {np.shape(p) for p in pvalues}
    if len(shapes) != 1:
        raise FusionError(f"detectors' maps are on different grids: shapes {sorted(shapes)}")
    p = np.stack([np.asarray(x, np.float64) for x in pvalues])
    finite = np.isfinite(p)
    if np.any((p[finite] <= 0) | (p[finite] > 1)):
        raise FusionError("p-values must lie in (0, 1]")
    return p, finite, finite.sum(axis=0)


def fisher(pvalues: Sequence[np.ndarray]) -> np.ndarray:
    """Fisher's combined p over the detectors that scored each pixel; NaN where none did."""
    p, finite, k = _stack(pvalues)
    x = -2.0 * np.where(finite, np.log(np.where(finite, p, 1.0)), 0.0).sum(axis=0)
    out = np.full(k.shape, np.nan)
    some = k > 0
    out[some] = sps.chi2.sf(x[some], 2 * k[some])
    return out


def min_p(pvalues: Sequence[np.ndarray]) -> np.ndarray:
    """Tippett's combined p, 1 − (1 − min p)^k, over the detectors that scored each pixel; NaN where none did."""
    p, finite, k = _stack(pvalues)
    lowest = np.where(finite, p, np.inf).min(axis=0)
    out = np.full(k.shape, np.nan)
    some = k > 0
    # −expm1(k·log1p(−p)) keeps digits for tiny p, where 1 − (1 − p)^k would round to k·p or to 0
    out[some] = -np.expm1(k[some] * np.log1p(-np.minimum(lowest[some], 1.0 - 1e-16)))
    return out


FUSERS: dict[str, Callable[[Sequence[np.ndarray]], np.ndarray]] = {"fisher": fisher, "min_p": min_p}


def fused_score(pvalues: Sequence[np.ndarray], method: str) -> np.ndarray:
    """−log₁₀ of the combined p (float32 map; NaN where no detector scored)."""
    try:
        fuse = FUSERS[method]
    except KeyError:
        raise FusionError(f"fusion method {method!r} is not one of {sorted(FUSERS)}") from None
    return (-np.log10(fuse(pvalues))).astype(np.float32)


# ---------------------------------------------------------------------------------------------- detectors' scores


def histogram_of(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) in `stats.bin_counts` layout from a `stats.histogram_record` (threshold.json)."""
    counts = [record["at_or_below_first_edge"], *record["counts"], record["above_last_edge"]]
    return np.asarray(counts, np.float64), np.asarray(record["edges"], np.float64)


def detector_pvalues(d2: np.ndarray, standardisation: dict, threshold: dict) -> np.ndarray:
    """Tail probabilities of one detector's stitched d² map under its own normal pixels.

    `standardisation`: the slide's record in the detector's maps.json ("slide_standardisation"); `threshold`: the
    detector's threshold.json. A detector that standardises per slide (method robust) is compared on its robust z,
    z = (d² − median) / scale of this slide, against the pooled z of its normal calibration pixels; otherwise its raw
    d² against their d². A zero scale (half the slide shares one d²) makes z ±inf: beyond every normal pixel.
    """
    if standardisation.get("method", "none") == "robust":
        reference = (threshold.get("slide_standardisation") or {}).get("z_histogram_normal")
        if reference is None:
            raise FusionError("the detector's maps are robust-standardised but its threshold.json has no z histogram")
        if standardisation.get("median") is None:
            return np.full(np.shape(d2), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = (np.asarray(d2, np.float64) - standardisation["median"]) / standardisation["scale"]
        score[np.asarray(d2 == standardisation["median"])] = 0.0  # 0/0 at the median itself
    else:
        reference = threshold.get("d2_histogram_normal")
        if reference is None:
            raise FusionError("the detector's threshold.json has no d2_histogram_normal")
        score = np.asarray(d2, np.float64)
    return tail_probability(score, *histogram_of(reference))


def normal_pixels(score: np.ndarray, tissue: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """Fused scores of the scored tissue outside the (margin-grown) annotations: what τ is fitted on."""
    keep = (np.asarray(tissue) > 0) & ~np.asarray(annotated, bool) & np.isfinite(score)
    return np.asarray(score)[keep]


def quantile_tau(normal: Sequence[np.ndarray], q: float) -> dict:
    """τ of the fused score: the q-quantile of the pooled normal pixels (numpy's linear interpolation)."""
    if not 0.0 < q < 1.0:
        raise FusionError(f"fusion.normal_quantile={q} must lie strictly between 0 and 1")
    values = np.concatenate([np.asarray(v, np.float64).ravel() for v in normal]) if normal else np.zeros(0)
    if not values.size:
        raise FusionError("no normal scored pixels on the threshold/validation slides to fit the fused τ on")
    tau = float(np.quantile(values, q))
    return {"method": "quantile", "q": float(q), "tau": tau, "n": int(values.size),
            "flagged_fraction": float((values > tau).mean())}  # fmt: skip


def flags_of(score: np.ndarray, tau: float) -> np.ndarray:
    """1 where the fused score exceeds τ, 0 where it does not, NaN where no detector scored the pixel."""
    score = np.asarray(score, np.float32)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(score), np.nan, (score > tau).astype(np.float32)).astype(np.float32)
