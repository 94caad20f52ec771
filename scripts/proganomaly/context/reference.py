"""The normal reference of the context detector and its k-nearest-neighbour score.

Fitted once on the context vectors of the normal reference slides' patches: each column is centred and scaled with
their median and MAD (robust: a few odd reference patches do not set the scale) or mean and standard deviation
(plain), and a seeded random subsample of at most `max_vectors` standardised vectors is kept. A patch's score is the
mean Euclidean distance of its standardised vector to its k nearest reference vectors: a neighbourhood unlike every
normal neighbourhood scores high whatever direction it differs in, and no Gaussian is assumed (neighbourhood means of
different tissues form separate clusters, which a single Gaussian would smear).

Each reference vector keeps the index of its slide, so that a reference slide's own patches can be scored against
the other slides only (`exclude_group`): scored against themselves they would find their own neighbourhoods, which
overlap theirs, at distance ~0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

from proganomaly.context.neighbourhood import ContextError

STANDARDISE = ("robust", "plain")
MAD_TO_SD = 1.4826  # MAD of a normal distribution × this = its standard deviation
FORMAT = 1


@dataclass(frozen=True)
class Reference:
    names: tuple[str, ...]  # one per vector column
    centre: np.ndarray  # (D,)
    scale: np.ndarray  # (D,), > 0
    vectors: np.ndarray  # (M, D) float32, standardised
    groups: np.ndarray  # (M,) int: index into group_names of each vector's slide
    group_names: tuple[str, ...]
    k: int
    standardise: str
    settings: dict = field(default_factory=dict)  # how the vectors were built (vectors.ContextSettings.to_dict())
    fitted_on: int = 0  # reference patches before subsampling

    @property
    def width(self) -> int:
        return len(self.names)


def _scale(x: np.ndarray, standardise: str) -> tuple[np.ndarray, np.ndarray]:
    if standardise == "robust":
        centre = np.median(x, axis=0)
        scale = MAD_TO_SD * np.median(np.abs(x - centre), axis=0)
        # A column whose MAD is 0 (e.g. a rare LBP code or DAB in H&E: mostly one value) gets its std instead.
        scale = np.where(scale > 0, scale, x.std(axis=0))
    else:
        centre, scale = x.mean(axis=0), x.std(axis=0)
    # A constant column carries no information about normal tissue; unit scale keeps any deviation from it visible
    # at its raw size instead of dividing by ~0.
    tiny = scale <= 1e-12 * np.maximum(1.0, np.abs(centre))
    return centre, np.where(tiny, 1.0, scale)


def fit_reference(
    vectors: np.ndarray,
    names: Sequence[str],
    *,
    k: int = 3,
    standardise: str = "robust",
    max_vectors: int = 50_000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    group_names: Sequence[str] = (),
    settings: dict | None = None,
) -> Reference:
    """Fit the reference on (M, D) normal `vectors` with column `names`; `groups` (M,) ints index `group_names`."""
    x = np.asarray(vectors, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ContextError(f"need a non-empty (M, D) array of reference vectors, got shape {x.shape}")
    if x.shape[1] != len(names):
        raise ContextError(f"{x.shape[1]} vector columns but {len(names)} names")
    if not np.all(np.isfinite(x)):
        raise ContextError("reference vectors must be finite")
    if standardise not in STANDARDISE:
        raise ContextError(f"standardise must be one of {STANDARDISE}, got {standardise!r}")
    if not (isinstance(k, int | np.integer) and k >= 1):
        raise ContextError(f"k must be a positive integer, got {k!r}")
    groups = np.zeros(len(x), np.int64) if groups is None else np.asarray(groups, np.int64)
    if groups.shape != (len(x),):
        raise ContextError(f"groups must be one int per reference vector ({len(x)}), got shape {groups.shape}")
    group_names = tuple(group_names) or tuple(str(g) for g in range(int(groups.max()) + 1))
    if groups.min() < 0 or groups.max() >= len(group_names):
        raise ContextError(f"groups index {len(group_names)} group names, got values {groups.min()}..{groups.max()}")
    if max_vectors < k:
        raise ContextError(f"max_vectors ({max_vectors}) must be at least k ({k})")
    if len(x) < k:
        raise ContextError(f"{len(x)} reference vectors, fewer than k = {k}")
    centre, scale = _scale(x, standardise)
    keep = np.arange(len(x))
    if len(x) > max_vectors:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_vectors, replace=False))
    z = ((x[keep] - centre) / scale).astype(np.float32)
    return Reference(tuple(names), centre, scale, z, groups[keep], group_names, int(k), standardise,
                     dict(settings or {}), len(x))  # fmt: skip


def standardised(ref: Reference, vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, np.float64)
    if x.ndim != 2 or x.shape[1] != ref.width:
        raise ContextError(
            f"vectors have {x.shape[-1] if x.ndim else 0} columns, the reference {ref.width} "
            f"({', '.join(ref.names[:3])}, …): were they built with the reference's settings?"
        )
    if not np.all(np.isfinite(x)):
        raise ContextError("context vectors must be finite")
    return (x - ref.centre) / ref.scale


def knn_score(ref: Reference, vectors: np.ndarray, *, exclude_group: str | None = None) -> np.ndarray:
    """(N,) mean Euclidean distance of each standardised vector to its k nearest reference vectors (brute force).

    exclude_group: a reference slide's name whose own vectors are left out (to score that slide's patches against
    the rest of the reference). Zero query vectors give an empty array.
    """
    z = standardised(ref, vectors)
    pool = ref.vectors
    if exclude_group is not None:
        if exclude_group not in ref.group_names:
            raise ContextError(f"{exclude_group!r} is not a reference slide ({', '.join(ref.group_names)})")
        pool = pool[ref.groups != ref.group_names.index(exclude_group)]
    if len(pool) < ref.k:
        raise ContextError(f"{len(pool)} reference vectors left, fewer than k = {ref.k}")
    if len(z) == 0:
        return np.zeros(0)
    # Brute force on BLAS, in sklearn's memory-bounded chunks: context vectors have 40-200 columns, where a k-d tree
    # visits nearly every leaf (measured ~100× slower than brute force at 80 columns).
    nn = NearestNeighbors(n_neighbors=ref.k, algorithm="brute").fit(pool.astype(np.float64))
    dist, _ = nn.kneighbors(z)
    return np.asarray(dist, np.float64).mean(axis=1)


def save_reference(ref: Reference, npz_path: str | Path, json_path: str | Path) -> None:
    """The arrays to `npz_path`, names and settings to `json_path` (readable provenance)."""
    np.savez_compressed(npz_path, centre=ref.centre, scale=ref.scale, vectors=ref.vectors, groups=ref.groups)
    meta = {
        "format": FORMAT, "names": list(ref.names), "k": ref.k, "standardise": ref.standardise,
        "group_names": list(ref.group_names), "settings": ref.settings, "fitted_on": ref.fitted_on,
        "kept": len(ref.vectors),
    }  # fmt: skip
    Path(json_path).write_text(json.dumps(meta, indent=2) + "\n")


def load_reference(npz_path: str | Path, json_path: str | Path) -> Reference:
    """The reference written by `save_reference`, checked for consistency of its two files."""
    try:
        meta = json.loads(Path(json_path).read_text())
        with np.load(npz_path) as arrays:
            a = {k: arrays[k] for k in ("centre", "scale", "vectors", "groups")}
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise ContextError(f"cannot read the context reference {npz_path} / {json_path} ({exc}); refit it") from None
    if meta.get("format") != FORMAT:
        raise ContextError(f"{json_path}: reference format {meta.get('format')!r}, expected {FORMAT}; refit it")
    d = len(meta["names"])
    if a["centre"].shape != (d,) or a["scale"].shape != (d,) or a["vectors"].shape[1:] != (d,):
        raise ContextError(f"{npz_path} does not match the {d} names of {json_path}; refit the reference")
    return Reference(tuple(meta["names"]), a["centre"], a["scale"], a["vectors"], a["groups"],
                     tuple(meta["group_names"]), int(meta["k"]), meta["standardise"], meta.get("settings", {}),
                     int(meta.get("fitted_on", 0)))  # fmt: skip
