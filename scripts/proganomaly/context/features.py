"""Per-patch colour and texture statistics of a slide's patches, read as the detector reads them.

The 20 statistics are the texture_baseline scorer's (proganomaly.scoring.texture_baseline.patch_features: HED
moments, Sobel gradient moments at two scales, uniform LBP histogram), computed in TensorFlow, which the
workflow's `tensorflow` environment has anyway; reusing them means one definition of the statistics. TensorFlow is
imported only when features are computed, so the rest of the context detector needs none.

Patches are read as infer_slide reads them: the level-0 square of each row of the patch table, area-resampled to
`out_px` (the model's patch size, so that textures are measured at the resolution the detector sees), then mapped
with the slide's one stain estimate (`stain.slide_normaliser`), so that lab colour differences do not become
neighbourhood differences.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from proganomaly.context.neighbourhood import ContextError


def feature_names() -> tuple[str, ...]:
    from proganomaly.scoring.texture_baseline import FEATURE_NAMES

    return tuple(FEATURE_NAMES)


def texture_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) patches → float64 (N, 20) statistics in `feature_names()` order."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ContextError(f"patches must be uint8 (N, S, S, 3), got {images.shape} {images.dtype}")
    if len(images) == 0:
        return np.zeros((0, len(feature_names())))
    from proganomaly.scoring.texture_baseline import patch_features

    return np.asarray(patch_features(images), np.float64)


def slide_features(
    slide,
    table: pd.DataFrame,
    out_px: int,
    *,
    normaliser: Callable[[np.ndarray], np.ndarray] | None = None,
    read_patch: Callable | None = None,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(N, 20) statistics of the N patches of `table` (level-0 x, y, width) on an open `slide`, in table order.

    read_patch(slide, x, y, size_l0, out_px) defaults to proganomaly.data.slide.read_patch (level 0); normaliser maps
    a uint8 batch to the reference stain (None: as read).
    """
    if read_patch is None:
        from proganomaly.data.slide import read_patch
    if not (isinstance(out_px, int | np.integer) and out_px >= 5):
        raise ContextError(f"out_px must be an integer ≥ 5 (the texture statistics need 5 px), got {out_px!r}")
    parts = []
    for start in range(0, len(table), batch_size):
        rows = table.iloc[start : start + batch_size]
        boxes = zip(rows.x, rows.y, rows.width, strict=True)
        batch = np.stack([read_patch(slide, int(x), int(y), int(w), int(out_px)) for x, y, w in boxes])
        if normaliser is not None:
            batch = normaliser(batch)
        parts.append(texture_features(batch))
        if progress is not None:
            progress(len(rows))
    return np.concatenate(parts) if parts else np.zeros((0, len(feature_names())))
