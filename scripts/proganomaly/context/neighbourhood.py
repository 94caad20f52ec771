"""Neighbourhood statistics of per-patch features on a slide's patch grid.

For each patch, the mean (and optionally the standard deviation) of the features of the patches whose centres lie
within a disc of radius r (level-0 px) around its centre, or within a ring r_{i-1} < d ≤ r_i. Only patches that
exist are averaged: near the tissue edge, or next to a hole, a disc holds fewer patches and its mean is over those
alone (the coverage normalisation), so glass never enters a statistic and never reads as "pale tissue".

Pairs are found with a k-d tree in chunks of query patches, so time and memory are linear in the number of patches
(each patch has a bounded number of neighbours within the largest radius) and a chunk's pairs bound the memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

STATS = ("mean", "std")
KINDS = ("disc", "ring")
CHUNK = 8192  # query patches per chunk: ~3 M pairs at 256 µm on a 24 µm grid


class ContextError(ValueError):
    """Inputs the context detector cannot use; the message says which and why."""


def radii_px(radii_um: Sequence[float], mpp: float) -> np.ndarray:
    """Radii in µm as level-0 px at `mpp` µm/px, checked to be positive and strictly increasing."""
    radii = np.asarray(radii_um, np.float64)
    if not (mpp and np.isfinite(mpp) and mpp > 0):
        raise ContextError(f"level-0 resolution must be a positive µm/px, got {mpp!r}")
    if radii.ndim != 1 or radii.size == 0 or not np.all(np.isfinite(radii)) or np.any(radii <= 0):
        raise ContextError(f"radii must be one or more positive µm values, got {list(np.atleast_1d(radii_um))}")
    if np.any(np.diff(radii) <= 0):
        raise ContextError(f"radii must be strictly increasing, got {radii.tolist()}")
    return radii / float(mpp)


def patch_centres(table: pd.DataFrame) -> np.ndarray:
    """(N, 2) level-0 centres (x, y) of a patch table's patches (x, y, width, height)."""
    missing = [c for c in ("x", "y", "width", "height") if c not in table.columns]
    if missing:
        raise ContextError(f"patch table lacks column(s) {missing}")
    x, y, w, h = (table[c].to_numpy(np.float64) for c in ("x", "y", "width", "height"))
    return np.stack([x + w / 2, y + h / 2], axis=1)


def _check(centres: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centres = np.asarray(centres, np.float64)
    features = np.asarray(features, np.float64)
    if centres.ndim != 2 or centres.shape[1] != 2:
        raise ContextError(f"centres must be (N, 2), got {centres.shape}")
    if features.ndim != 2 or features.shape[0] != centres.shape[0]:
        raise ContextError(f"features must be (N, F) with N = {centres.shape[0]} patches, got {features.shape}")
    if centres.shape[0] == 0:
        raise ContextError("no patches: a slide without tissue patches has no neighbourhoods")
    if not (np.all(np.isfinite(centres)) and np.all(np.isfinite(features))):
        raise ContextError("centres and features must be finite (a NaN feature would spread to every neighbour)")
    return centres, features


def neighbourhood_stats(
    centres: np.ndarray,
    features: np.ndarray,
    radii: Sequence[float],
    *,
    stats: Sequence[str] = ("mean",),
    kind: str = "disc",
    chunk: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbourhood statistics of (N, F) `features` at (N, 2) level-0 `centres`, for increasing `radii` (level-0 px).

    Returns (values (N, R·S·F), counts (N, R)): for each radius (outer loop), each statistic in `stats` (middle) and
    each feature (inner), and the number of patches averaged. kind "disc": centres within distance ≤ r (the patch
    itself included). kind "ring": r_{i-1} < d ≤ r_i (the first ring is the first disc); a ring without patches (an
    island of tissue smaller than the ring) takes its disc's statistics, the nearest evidence there is.
    std is the population standard deviation over the same patches.
    """
    centres, features = _check(centres, features)
    radii = np.asarray(radii, np.float64)
    if radii.ndim != 1 or radii.size == 0 or np.any(radii <= 0) or np.any(np.diff(radii) <= 0):
        raise ContextError(f"radii must be positive and strictly increasing, got {radii.tolist()}")
    bad = [s for s in stats if s not in STATS]
    if bad or not len(stats) or len(set(stats)) != len(stats):
        raise ContextError(f"stats must be distinct names among {STATS}, got {list(stats)}")
    if kind not in KINDS:
        raise ContextError(f"kind must be one of {KINDS}, got {kind!r}")
    n, f = features.shape
    x2 = features * features if "std" in stats else None
    tree = cKDTree(centres)
    # Pairs at exactly r count as inside: a tolerance keeps float rounding of grid distances from deciding that.
    edges = radii * (1 + 1e-9)
    values = np.empty((n, radii.size * len(stats) * f))
    counts = np.empty((n, radii.size), np.int64)
    step = max(1, int(chunk))
    for start in range(0, n, step):
        q = centres[start : start + step]
        # Every pair (query patch, neighbour) within the largest radius with its distance, built in C: a chunk's
        # own small tree against the slide's (the query patch itself is one pair, at distance 0).
        pairs = cKDTree(q).sparse_distance_matrix(tree, edges[-1], output_type="ndarray")
        rows, cols, d = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
        # Each pair lands in exactly one annulus; discs are the cumulative sums of the annuli.
        annulus = np.searchsorted(edges, d, side="left")
        a_sum = np.zeros((radii.size, len(q), f))
        a_sq = np.zeros_like(a_sum) if x2 is not None else None
        a_n = np.zeros((radii.size, len(q)))
        for a in range(radii.size):
            sel = annulus == a
            m = sparse.csr_matrix((np.ones(sel.sum()), (rows[sel], cols[sel])), shape=(len(q), n))
            a_sum[a] = m @ features
            if x2 is not None:
                a_sq[a] = m @ x2
            a_n[a] = np.bincount(rows[sel], minlength=len(q))
        d_sum, d_n = np.cumsum(a_sum, axis=0), np.cumsum(a_n, axis=0)
        d_sq = np.cumsum(a_sq, axis=0) if x2 is not None else None
        if kind == "disc":
            s_sum, s_sq, s_n = d_sum, d_sq, d_n
        else:
            empty = a_n == 0
            s_sum = np.where(empty[..., None], d_sum, a_sum)
            s_sq = np.where(empty[..., None], d_sq, a_sq) if x2 is not None else None
            s_n = np.where(empty, d_n, a_n)
        mean = s_sum / s_n[..., None]  # every disc holds its own patch, so no count is 0
        parts = []
        for i in range(radii.size):
            for s in stats:
                if s == "mean":
                    parts.append(mean[i])
                else:  # E[x²] − E[x]², clipped: rounding can take a constant feature's variance below 0
                    parts.append(np.sqrt(np.maximum(s_sq[i] / s_n[i][:, None] - mean[i] ** 2, 0.0)))
        values[start : start + len(q)] = np.concatenate(parts, axis=1)
        counts[start : start + len(q)] = s_n.T
    return values, counts


def stat_names(feature_names: Sequence[str], radii_um: Sequence[float], stats: Sequence[str], kind: str) -> list[str]:
    """Column names of `neighbourhood_stats`' values, e.g. ``disc128um_mean:eosin_mean``."""
    return [
        f"{kind}{float(r):g}um_{s}:{name}" for r in radii_um for s in stats for name in feature_names
    ]  # fmt: skip
