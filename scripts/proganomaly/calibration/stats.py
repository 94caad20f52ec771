"""Streaming moments, the fitted error Gaussian, squared Mahalanobis distances and streaming histograms.

Moments are kept as (n, mean, M2) in float64 and combined with the pairwise update of Chan, Golub & LeVeque, so
batches and devices merge exactly, in any order and at any batch size (a batch of one row is just n = 1, M2 = 0).
The original mixed a sample covariance into its population-mode merge and let replicas overwrite each other
(pcead-spec §5); raw Σxxᵀ sums would lose digits to cancellation when the mean is large against the spread.
The covariance may be shrunk in correlation space (`shrunk_covariance`, calibration.covariance) and d² may count each
channel on its anomalous side only (`one_sided`, calibration.one_sided); docs/scoring.md "How d² is formed".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np


class StatsError(ValueError):
    """Statistics cannot be formed from the data seen (too few observations, singular covariance)."""


@dataclasses.dataclass(frozen=True)
class Moments:
    """Count, mean (d,) and centred sum of outer products M2 (d, d) of n observations, float64."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])


def empty_moments(dim: int) -> Moments:
    return Moments(0, np.zeros(dim), np.zeros((dim, dim)))


def moments_of(x: np.ndarray) -> Moments:
    """Moments of the rows of `x` (n, d), accumulated in float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] == 0:
        return empty_moments(x.shape[1])
    mean = x.mean(axis=0)
    c = x - mean
    return Moments(int(x.shape[0]), mean, c.T @ c)


def merge(a: Moments, b: Moments) -> Moments:
    """Chan's pairwise merge: exact for any split of the data into the two parts."""
    if a.n == 0:
        return b
    if b.n == 0:
        return a
    if a.dim != b.dim:
        raise StatsError(f"cannot merge moments of dimension {a.dim} and {b.dim}")
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    m2 = a.m2 + b.m2 + np.outer(delta, delta) * (a.n * b.n / n)
    return Moments(n, mean, m2)


def merge_all(parts: Iterable[Moments]) -> Moments:
    """Merge many parts (e.g. per batch or per replica) as a balanced tree, so rounding does not grow with depth."""
    parts = [p for p in parts if p.n]
    if not parts:
        raise StatsError("no observations to merge")
    while len(parts) > 1:
        parts = [merge(*parts[i : i + 2]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def from_batch(n, mean, m2) -> Moments:
    """Moments from the (n, mean, M2) that a compiled batch step returned (tensors or arrays)."""
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    return Moments(int(n), mean, np.asarray(m2, dtype=np.float64).reshape(mean.size, mean.size))


def covariance(m: Moments, ddof: int = 1) -> np.ndarray:
    """Sample (ddof=1, numpy.cov's default) or population (ddof=0) covariance."""
    if m.n - ddof <= 0:
        raise StatsError(f"{m.n} observation(s) are too few for a covariance with ddof={ddof}")
    return m.m2 / (m.n - ddof)


COVARIANCE_KINDS = ("oas", "ledoit_wolf", "sample")
# Below this many independent rows (patches) per feature dimension the covariance is too noisy not to say so.
MIN_ROWS_PER_DIMENSION = 10


def shrinkage_intensity(z: np.ndarray, kind: str) -> float:
    """scikit-learn's shrinkage α of the rows `z` (n, d) towards a multiple of the identity (oas or ledoit_wolf)."""
    from sklearn.covariance import OAS, LedoitWolf

    if kind == "oas":
        return float(OAS().fit(z).shrinkage_)
    if kind == "ledoit_wolf":
        return float(LedoitWolf().fit(z).shrinkage_)
    raise StatsError(f"calibration.covariance {kind!r} is not one of {list(COVARIANCE_KINDS)}")


def shrunk_covariance(m: Moments, rows: np.ndarray | None, kind: str) -> tuple[np.ndarray, dict]:
    """The covariance of `m` shrunk in correlation space: Σ' = D ((1 − α) R + α I) D, and a record of the shrinkage.

    D is the diagonal of the exact streamed standard deviations and R = D⁻¹ Σ D⁻¹ the exact correlation. α comes from
    scikit-learn on the `rows` (one feature vector per patch: the independent observations) standardised by D and
    the streamed mean: the features have wildly different scales (a critic logit of ±50 next to LBP fractions of
    0.01), so shrinking Σ itself towards μ·I would drown the small channels. The variances stay exact; only the
    correlations, which n patches estimate poorly unless n ≫ d, are pulled towards 0. A channel with zero variance
    stays at zero (the scorer's ridge handles it). `kind` "sample" is the exact sample covariance.
    """
    cov = covariance(m, ddof=1)
    n_rows = None if rows is None else int(np.asarray(rows).shape[0])
    record = {
        "kind": kind,
        "alpha": 0.0,
        "n_rows": n_rows,
        "rows_per_dimension": None if n_rows is None else n_rows / m.dim,
    }
    if kind == "sample":
        return cov, record
    if kind not in COVARIANCE_KINDS:
        raise StatsError(f"calibration.covariance {kind!r} is not one of {list(COVARIANCE_KINDS)}")
    if rows is None:
        raise StatsError(f"calibration.covariance {kind!r} needs one feature row per patch; none were collected")
    rows = np.asarray(rows, np.float64).reshape(-1, m.dim)
    if rows.shape[0] < 2:
        raise StatsError(f"{rows.shape[0]} patch row(s) are too few to estimate the shrinkage of the covariance")
    std = np.sqrt(np.diag(cov))
    inv = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
    alpha = shrinkage_intensity((rows - m.mean) * inv, kind)
    shrunk = (1.0 - alpha) * (cov * np.outer(inv, inv)) + alpha * np.eye(m.dim)
    out = shrunk * np.outer(std, std)
    record["alpha"] = alpha
    return (out + out.T) / 2, record


def sample_size_warning(n_rows: int, dim: int) -> str | None:
    """A warning when fewer than MIN_ROWS_PER_DIMENSION independent rows back each dimension of the Gaussian."""
    if n_rows >= MIN_ROWS_PER_DIMENSION * dim:
        return None
    return (
        f"only {n_rows} calibrate patches for {dim} feature dimensions ({n_rows / dim:.1f} per dimension, fewer than "
        f"{MIN_ROWS_PER_DIMENSION}): a per-patch feature has one independent value per patch, so the covariance is "
        "poorly determined and out-of-sample d² is inflated; add calibrate slides or use a scorer with fewer channels"
    )


def gaussian_fit(m: Moments, ridge: float = 0.0, *, rows: np.ndarray | None = None, kind: str = "sample") -> dict:
    """Mean, covariance (the sample covariance, or shrunk as `kind` says: `shrunk_covariance`), its inverse and both
    Cholesky factors as float64 arrays, and the shrinkage record under "shrinkage".

    `precision_cholesky` is the original's `error_distribution_sigma_linv` (lower L with L Lᵀ = Σ⁻¹). With
    `ridge` > 0 each variance is raised by ridge times itself plus ridge times 1e-3 of the mean variance, so that
    collinear or constant feature channels still give an invertible covariance (0: the covariance as estimated).
    """
    cov, shrinkage = shrunk_covariance(m, rows, kind)
    if ridge > 0:
        diag = np.diag(cov)
        cov = cov + np.diag(ridge * diag + ridge * 1e-3 * max(float(np.mean(diag)), 1e-12))
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        rank = np.linalg.matrix_rank(cov)
        raise StatsError(
            f"the error covariance is not positive definite (rank {rank} of {m.dim}, n = {m.n}): some error "
            "channels are constant or collinear; the model reconstructs them identically or the data are degenerate"
        ) from None
    eye = np.eye(m.dim)
    inv_chol = np.linalg.solve(chol, eye)  # chol⁻¹, lower triangular
    precision = inv_chol.T @ inv_chol
    precision = (precision + precision.T) / 2
    return {
        "n": m.n,
        "mean": m.mean.copy(),
        "covariance": cov,
        "precision": precision,
        "cholesky": chol,
        "precision_cholesky": np.linalg.cholesky(precision),
        "shrinkage": shrinkage,
    }


def check_directions(directions, dim: int) -> np.ndarray | None:
    """Per-channel anomaly directions as an int array of length `dim` (None: two-sided everywhere)."""
    if directions is None:
        return None
    d = np.asarray(directions).reshape(-1)
    if d.size != dim or not np.isin(d, (-1, 0, 1)).all():
        raise StatsError(f"anomaly directions {d.tolist()} must be {dim} values, each -1, 0 or +1")
    return d.astype(np.int64)


def one_sided(y: np.ndarray, directions) -> np.ndarray:
    """Deviations y = e − μ clipped to their anomalous side per channel: max(y, 0) where the direction is +1 (larger
    is anomalous), min(y, 0) where it is −1, y unchanged where it is 0 (both sides anomalous)."""
    d = check_directions(directions, np.shape(y)[-1])
    if d is None or not d.any():
        return y
    return np.clip(y, np.where(d > 0, 0.0, -np.inf), np.where(d < 0, 0.0, np.inf))


def mahalanobis_d2(e: np.ndarray, mean: np.ndarray, precision: np.ndarray, directions=None) -> np.ndarray:
    """Squared Mahalanobis distance yᵀ Σ⁻¹ y over the last axis (numpy, float64), y = e − μ, clipped by `one_sided`
    when `directions` are given."""
    y = one_sided(np.asarray(e, dtype=np.float64) - np.asarray(mean, dtype=np.float64), directions)
    return np.einsum("...i,ij,...j->...", y, np.asarray(precision, dtype=np.float64), y)


# ---------------------------------------------------------------------------------------------------- histograms


def linear_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    return np.unique(np.linspace(lo, hi, bins + 1).astype(np.float32))


def log_edges(lo: float, hi: float, per_decade: int) -> np.ndarray:
    """Log-spaced float32 edges: relative resolution 10^(1/per_decade) − 1 (2.3 % at 100 per decade)."""
    decades = np.log10(hi / lo)
    return np.unique(np.geomspace(lo, hi, round(float(decades) * per_decade) + 1).astype(np.float32))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """numpy twin of `tf_stats.tf_bin_counts` (same bins, same exact comparisons)."""
    idx = np.searchsorted(np.asarray(edges, np.float32), np.asarray(values, np.float32).ravel(), side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


def histogram_quantiles(counts: np.ndarray, edges: np.ndarray, qs, lo: float | None = None) -> np.ndarray:
    """Quantiles from `bin_counts`-style counts, linear within a bin (accurate to one bin width).

    The first bin (-inf, e0] is taken as [lo, e0] (lo defaults to e0) and the open last bin as its left edge.
    """
    counts = np.asarray(counts, np.float64)
    edges = np.asarray(edges, np.float64)
    total = counts.sum()
    if total <= 0:
        raise StatsError("empty histogram has no quantiles")
    left = np.concatenate([[edges[0] if lo is None else lo], edges])
    right = np.concatenate([edges, [edges[-1]]])
    cum = np.cumsum(counts)
    out = []
    for q in np.atleast_1d(qs):
        target = q * total
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, len(counts) - 1)
        before = cum[i] - counts[i]
        frac = 0.0 if counts[i] == 0 else (target - before) / counts[i]
        out.append(left[i] + frac * (right[i] - left[i]))
    return np.asarray(out)


def histogram_record(
    counts: np.ndarray, edges: np.ndarray, qs=(0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)
) -> dict:
    """JSON-ready histogram: edges, counts of (edges[i], edges[i+1]], the two open tails and quantiles."""
    counts = np.asarray(counts, np.int64)
    return {
        "bins": "(edges[i], edges[i+1]]; at_or_below_first_edge and above_last_edge are the open tails",
        "edges": np.asarray(edges, np.float64).tolist(),
        "counts": counts[1:-1].tolist(),
        "at_or_below_first_edge": int(counts[0]),
        "above_last_edge": int(counts[-1]),
        "total": int(counts.sum()),
        "quantiles": {f"{q:g}": float(v) for q, v in zip(qs, histogram_quantiles(counts, edges, qs), strict=True)},
    }
