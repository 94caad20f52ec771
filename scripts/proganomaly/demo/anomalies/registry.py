"""The registry of anomaly kinds: function, QuPath classification, class group, display colour, default sizes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from shapely.geometry import Polygon

from proganomaly.demo.anomalies import artefacts, tissue_kinds
from proganomaly.demo.anomalies.geometry import Anomaly, band_outline, blob_outline

# The class groups evaluation reports on (each feature's "anomaly_group" property names one).
GROUPS = ("foreign stain", "same-stain tissue", "artefacts")


@dataclasses.dataclass(frozen=True)
class AnomalyKind:
    apply: Callable[..., Anomaly]
    classification: str  # the QuPath classification name of its annotations
    group: str  # one of GROUPS
    color: tuple[int, int, int]  # QuPath display colour
    size_px: tuple[int, int]  # default longer side, level-0 px at ~0.5 µm/px
    aspect: tuple[float, float]  # shorter / longer side of the outline
    feather_px: float  # width of the soft edge across the outline
    site: str = "tissue"  # "tissue", or "dermis": below the tissue's median nuclei density
    outline: Callable[..., Polygon] = blob_outline  # (rng, size, aspect) -> Polygon centred on (0, 0)


# Sizes are level-0 px at ~0.5 µm/px: a region must hold whole 64-px patches, not only patches that straddle its edge,
# or a patch model sees mostly the seam.
KINDS: dict[str, AnomalyKind] = {
    "ihc": AnomalyKind(
        tissue_kinds.ihc, "IHC tissue", "foreign stain", (150, 90, 30), (128, 224), (0.55, 1.0),
        tissue_kinds.IHC_FEATHER_PX,
    ),
    "magnified": AnomalyKind(
        tissue_kinds.magnified, "Magnified tissue", "same-stain tissue", (200, 0, 200), (128, 224), (0.55, 1.0),
        tissue_kinds.MAGNIFIED_FEATHER_PX,
    ),
    "cell_islands": AnomalyKind(
        tissue_kinds.cell_islands, "Cell islands", "same-stain tissue", (110, 0, 170), (96, 176), (0.55, 1.0),
        tissue_kinds.CELL_ISLANDS_FEATHER_PX, "dermis",
    ),
    "blur": AnomalyKind(
        artefacts.blur, "Out-of-focus blur", "artefacts", (130, 130, 130), (128, 256), (0.5, 1.0),
        artefacts.BLUR_FEATHER_PX,
    ),
    "ink": AnomalyKind(
        artefacts.ink, "Marker ink", "artefacts", (0, 170, 170), (128, 256), (0.35, 1.0), artefacts.INK_FEATHER_PX
    ),
    "fold": AnomalyKind(
        artefacts.fold, "Tissue fold", "artefacts", (160, 110, 40), (224, 352), (0.2, 0.35),
        artefacts.FOLD_FEATHER_PX, outline=band_outline,
    ),
}  # fmt: skip


def class_table() -> list[dict]:
    """Every kind's classification, group and colour: what evaluation needs to group classes, as plain data."""
    return [
        {"kind": kind, "classification": s.classification, "group": s.group, "color": list(s.color)}
        for kind, s in KINDS.items()
    ]
