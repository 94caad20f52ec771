"""One context vector per patch: its neighbourhood statistics (and optionally its own features), by settings.

The settings travel with the fitted reference (`reference.save_reference`), so every slide is scored with the
vectors the reference was fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from proganomaly.context.neighbourhood import (
    KINDS,
    STATS,
    ContextError,
    neighbourhood_stats,
    patch_centres,
    radii_px,
    stat_names,
)


@dataclass(frozen=True)
class ContextSettings:
    """How a patch's context vector is built.

    radii_um: disc (or ring) radii in µm, increasing. stats: per-neighbourhood statistics ("mean", "std").
    kind: "disc" or "ring" (see neighbourhood_stats). own: whether the patch's own features come first.
    """

    radii_um: tuple[float, ...] = (64.0, 128.0, 256.0)
    stats: tuple[str, ...] = ("mean",)
    kind: str = "disc"
    own: bool = True
    extra: dict = field(default_factory=dict)  # free-form provenance (e.g. the feature extractor), saved as is

    def __post_init__(self):
        object.__setattr__(self, "radii_um", tuple(float(r) for r in self.radii_um))
        object.__setattr__(self, "stats", tuple(self.stats))
        if self.kind not in KINDS:
            raise ContextError(f"context kind must be one of {KINDS}, got {self.kind!r}")
        if not self.stats or any(s not in STATS for s in self.stats):
            raise ContextError(f"context stats must be among {STATS}, got {list(self.stats)}")
        radii_px(self.radii_um, 1.0)  # checks them

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, "radii_um": list(self.radii_um), "stats": list(self.stats)}

    @classmethod
    def from_dict(cls, d: dict) -> ContextSettings:
        return cls(**{k: d[k] for k in ("radii_um", "stats", "kind", "own", "extra") if k in d})


def vector_names(feature_names: Sequence[str], settings: ContextSettings) -> list[str]:
    own = [f"own:{n}" for n in feature_names] if settings.own else []
    return own + stat_names(feature_names, settings.radii_um, settings.stats, settings.kind)


def context_vectors(
    table: pd.DataFrame, features: np.ndarray, mpp: float, settings: ContextSettings
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) context vectors of a slide's patches and (N, R) patch counts of their neighbourhoods.

    table: the slide's patch table (level-0 x, y, width, height), one row per row of `features` (N, F); mpp: the
    slide's level-0 µm/px, which turns the radii into level-0 px.
    """
    features = np.asarray(features, np.float64)
    if len(table) != len(features):
        raise ContextError(f"{len(table)} patches but {len(features)} feature rows")
    stats, counts = neighbourhood_stats(
        patch_centres(table), features, radii_px(settings.radii_um, mpp), stats=settings.stats, kind=settings.kind
    )
    vectors = np.concatenate([features, stats], axis=1) if settings.own else stats
    return vectors, counts
