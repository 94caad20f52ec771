"""The anomaly classes of the demo benchmark: foreign stain, same-stain tissue and artefacts (issue 12, Deliver 1).

Pure functions on arrays. Every kind has the same signature,

    kind(rgb, poly, rng, *, source=None, tissue=None, feather_px=None) -> Anomaly

and returns a new uint8 RGB image together with the per-pixel blend weight `alpha` in [0, 1] and the annotated mask
(alpha >= 0.5, which is exactly the pixels whose centres lie inside `poly`, level-0 px, by the project's one
rasteriser). The weight rises smoothly across the outline over `feather_px` pixels, half outside and half inside, so
no seam gives a region away; pixels where alpha is 0 are returned unchanged, bit for bit. `source` is the image that
content is taken from (the slide before any anomaly was added; it defaults to `rgb`) so that one anomaly never
copies another.

Modules: `geometry` (outlines, soft edges, coverage), `pixels` (blending, resampling, nuclei density),
`tissue_kinds` (ihc, magnified, cell_islands), `artefacts` (blur, ink, fold), `registry` (KINDS: kind -> function,
QuPath classification, class group, default sizes) and `placement` (several kinds on a slide's tissue, and their
QuPath GeoJSON features).
"""

from proganomaly.demo.anomalies.geometry import (
    Anomaly,
    AnomalyError,
    band_outline,
    blob_outline,
    covered,
    feathered_alpha,
    rasterise,
)
from proganomaly.demo.anomalies.pixels import nuclei_density
from proganomaly.demo.anomalies.placement import PlacedAnomaly, annotation_features, place_anomalies
from proganomaly.demo.anomalies.registry import GROUPS, KINDS, AnomalyKind, class_table

__all__ = [
    "GROUPS",
    "KINDS",
    "Anomaly",
    "AnomalyError",
    "AnomalyKind",
    "PlacedAnomaly",
    "annotation_features",
    "band_outline",
    "blob_outline",
    "class_table",
    "covered",
    "feathered_alpha",
    "nuclei_density",
    "place_anomalies",
    "rasterise",
]
