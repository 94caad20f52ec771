"""QuPath-compatible GeoJSON in and out (level-0 pixel coordinates).

Written features follow QuPath's GeoJSON: ``properties.objectType`` ("annotation" or "tile"), ``classification``
{name, color} and numeric ``measurements``; each carries a UUID ``id`` derived from the slide and its index (uuid5),
so a rerun writes the same bytes. Predicted polygons get their own class, "<class> (predicted)", so they never mix
with the pathologist's annotations of the same class in QuPath, and their own id namespace ("prediction/<slide>/
<threshold>/<dilation>/<index>", prediction_id), so importing predictions and annotations into one QuPath image never
gives two objects the same id.

Tiles: each inferred patch is written as its stride cell (the stride × stride square centred in the patch, clipped to
the patch when the stride is larger), not the whole patch: patches overlap (64 px on a 48 px stride in the demo), their
centred stride cells do not, so a QuPath measurement map colours each point of the slide once. The cell carries the
scores of its whole patch.
"""

from __future__ import annotations

import json
import math
import uuid
import warnings
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from proganomaly.common.io import write_text

ANOMALY_CLASS = {"name": "Anomaly", "color": [230, 40, 40]}
# Per-patch columns of results/detectors/{detector}/slides/{slide}/patches.parquet exported as tile measurements (those present).
TILE_MEASUREMENTS = ("flagged_fraction", "mean_d2", "max_d2", "score", "latent_norm")
# A fixed namespace: feature ids are uuid5(namespace, "<slide>/<kind>/<index>"), the same on every run.
_NAMESPACE = uuid.UUID("5a0d6f3e-7f3b-4e59-9a52-3f7d0c8b1e21")


class GeoJSONError(ValueError):
    """A GeoJSON file cannot be used; the message names the file and the feature."""


def predicted_class(name: str) -> str:
    """The class of predicted polygons: distinct from the annotations' class `name` in QuPath."""
    return f"{name} (predicted)"


def feature_id(key: str, kind: str, index: int) -> str:
    """Deterministic UUID of feature `index` of `kind` ("annotation", "tile") in the file of `key` (a slide id)."""
    return str(uuid.uuid5(_NAMESPACE, f"{key}/{kind}/{index}"))


def prediction_id(slide_id: str, threshold: float, dilation: float, index: int) -> str:
    """Deterministic UUID of predicted polygon `index` of a slide at one operating point (threshold × dilation).

    Its uuid5 name has five '/'-separated parts ("prediction/<slide>/<threshold>/<dilation>/<index>"), feature_id's
    three (slide ids have no '/'), so no prediction shares a name, hence (uuid5) an id, with an annotation or tile,
    and predictions at two operating points never share one either.
    """
    return str(uuid.uuid5(_NAMESPACE, f"prediction/{slide_id}/{float(threshold)!r}/{float(dilation)!r}/{index}"))


def feature(geom: BaseGeometry, name: str | None, color: list[int] | None, *, fid: str | None = None,
            object_type: str = "annotation", locked: bool = False, **measurements: float) -> dict:  # fmt: skip
    """One QuPath feature: an annotation (or a tile), classified when `name` is given, with numeric measurements.

    Non-finite measurements become null (JSON has no NaN; QuPath reads null as a missing value).
    """
    props: dict = {"objectType": object_type}
    if name is not None:
        props["classification"] = {"name": name, "color": list(color or [])}
    props["isLocked"] = locked
    if measurements:
        props["measurements"] = {k: _number(v) for k, v in measurements.items()}
    feat: dict = {"type": "Feature"}
    if fid is not None:
        feat["id"] = fid
    feat.update(geometry=mapping(geom), properties=props)
    return feat


def write_features(path: str | Path, features: list[dict], **metadata) -> None:
    """Write a FeatureCollection atomically; `metadata` goes into a top-level `proganomaly` member."""
    doc = {"type": "FeatureCollection", "features": features}
    if metadata:
        doc["proganomaly"] = metadata
    write_text(path, json.dumps(doc, allow_nan=False))


def write_polygons(path: str | Path, geoms: list[BaseGeometry], name: str = ANOMALY_CLASS["name"],
                   color: list[int] = ANOMALY_CLASS["color"], measurements: list[dict] | None = None,
                   ids: list[str] | None = None, **metadata) -> None:  # fmt: skip
    """One QuPath annotation per non-empty geometry; `measurements[i]` (optional) is attached to geoms[i].

    Feature ids are `ids[i]` when given (predictions: prediction_id), else uuid5 of the `slide_id` metadata (else the
    file name) and the geometry's index.
    """
    if measurements is not None and len(measurements) != len(geoms):
        raise ValueError(f"{len(measurements)} measurement records for {len(geoms)} geometries")
    if ids is not None and len(ids) != len(geoms):
        raise ValueError(f"{len(ids)} feature ids for {len(geoms)} geometries")
    meas = measurements or [{}] * len(geoms)
    key = str(metadata.get("slide_id", Path(path).name))
    fids = ids if ids is not None else [feature_id(key, "annotation", i) for i in range(len(geoms))]
    feats = [
        feature(g, name, color, fid=fid, **m) for g, m, fid in zip(geoms, meas, fids, strict=True) if not g.is_empty
    ]
    write_features(path, feats, **metadata)


def write_predictions(path: str | Path, geoms: list[BaseGeometry], slide_id: str, threshold: float, dilation: float,
                      name: str, color: list[int], measurements: list[dict] | None = None,
                      **metadata) -> None:  # fmt: skip
    """Predicted polygons of one slide at one operating point, with ids in the prediction namespace."""
    ids = [prediction_id(slide_id, threshold, dilation, i) for i in range(len(geoms))]
    write_polygons(path, geoms, name, color, measurements, ids=ids, slide_id=slide_id, **metadata)


def tile_cells(patches, stride: float | None = None) -> np.ndarray:
    """(n, 4) boxes x0, y0, x1, y1 (level-0 px) of each patch's tile: the stride × stride square centred in the patch
    (clipped to the patch when the stride is larger). Patches on one stride grid then tile the plane without overlap;
    stride None keeps the whole patch."""
    x, y, w, h = (patches[c].to_numpy(np.float64) for c in ("x", "y", "width", "height"))
    if stride is None:
        return np.stack([x, y, x + w, y + h], axis=1)
    if not stride > 0:
        raise ValueError(f"tile stride must be > 0 level-0 px, got {stride}")
    cw, ch = np.minimum(w, float(stride)), np.minimum(h, float(stride))
    x0, y0 = x + (w - cw) / 2, y + (h - ch) / 2
    return np.stack([x0, y0, x0 + cw, y0 + ch], axis=1)


def tile_features(patches, slide_id: str, stride: float | None = None) -> list[dict]:
    """One locked QuPath tile per patch, its stride cell (tile_cells; the whole patch when stride is None), with the
    per-patch scores as measurements.

    patches: a frame with x, y, width, height and any of TILE_MEASUREMENTS (results/detectors/{detector}/slides/{slide}/patches.parquet).
    """
    missing = [c for c in ("x", "y", "width", "height") if c not in patches.columns]
    if missing:
        raise ValueError(f"per-patch table of slide {slide_id} lacks columns {missing}; re-run infer_slide")
    names = [c for c in TILE_MEASUREMENTS if c in patches.columns]
    cols = {c: patches[c].to_numpy() for c in names}
    boxes = tile_cells(patches, stride)
    feats = []
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        feats.append(
            {
                "type": "Feature",
                "id": feature_id(slide_id, "tile", i),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "tile",
                    "isLocked": True,
                    "measurements": {c: _number(cols[c][i]) for c in names},
                },
            }
        )
    return feats


def write_tiles(path: str | Path, patches, slide_id: str, stride: float | None = None, **metadata) -> None:
    """results/detectors/{detector}/slides/{slide}/tiles.geojson: every inferred patch as a QuPath tile (its stride cell) with its scores.

    stride: the patch grid's step in level-0 px (the tiling QC's stride_level0_px); None writes whole patches, which
    overlap wherever the stride is smaller than the patch, and says so in the metadata.
    """
    if stride is None:
        tiles = "whole patch (tiles overlap where the patch grid's stride is smaller than the patch)"
    else:
        tiles = (
            f"stride cell: the {float(stride):g} × {float(stride):g} level-0 px square centred in each patch (clipped "
            "to the patch), so tiles do not overlap; measurements are the scores of the whole patch"
        )
    meta = {"slide_id": slide_id, "coordinates": "level-0 px", "tiles": tiles}
    if stride is not None:
        meta["stride_level0_px"] = float(stride)
    write_features(path, tile_features(patches, slide_id, stride), **meta, **metadata)


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def read_polygons(path: str | Path, classes: set[str] | None = None) -> tuple[list[BaseGeometry], list[str]]:
    """Polygonal annotations of a GeoJSON file (FeatureCollection, Feature list or single Feature).

    Returns (geometries, repairs): invalid geometry is repaired with make_valid and each repair is reported in
    `repairs`, never silently dropped. Non-polygonal features (points, lines) are skipped and reported too.
    `classes` keeps only features whose classification name is in it (None keeps all).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise GeoJSONError(f"{path}: annotation file does not exist (fix the 'annotations' column)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GeoJSONError(f"{path}: not valid JSON ({err}); export annotations from QuPath as GeoJSON") from None
    if isinstance(doc, list):
        feats = doc
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    else:
        raise GeoJSONError(f"{path}: expected a FeatureCollection, a Feature or a list of Features")
    if not isinstance(feats, list):
        raise GeoJSONError(f"{path}: 'features' must be a list")
    geoms, repairs = [], []
    for i, feat in enumerate(feats):
        where = f"{path}: feature {i}"
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            raise GeoJSONError(f"{where}: not a GeoJSON Feature object")
        props = feat.get("properties") or {}
        fid = feat.get("id") or props.get("name")
        if fid:
            where += f" ({fid})"
        cls = (props.get("classification") or {}).get("name") if isinstance(props, dict) else None
        if classes is not None and cls not in classes:
            continue
        geom_doc = feat.get("geometry")
        if not isinstance(geom_doc, dict) or "type" not in geom_doc:
            raise GeoJSONError(f"{where}: missing or malformed 'geometry'")
        try:
            with warnings.catch_warnings():
                # NaN coordinates warn inside shapely; they are reported as an error just below instead.
                warnings.simplefilter("ignore", RuntimeWarning)
                geom = shape(geom_doc)
        except Exception as err:  # shapely raises several types for bad coordinates
            raise GeoJSONError(f"{where}: malformed {geom_doc.get('type')} geometry ({err})") from None
        if not geom.is_empty and not np.isfinite(shapely.get_coordinates(geom)).all():
            raise GeoJSONError(f"{where}: non-finite coordinates in {geom.geom_type} geometry")
        if geom.geom_type not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            repairs.append(f"{where}: {geom.geom_type} skipped (only polygons are areas)")
            continue
        if not geom.is_valid:
            reason = shapely.is_valid_reason(geom)
            geom = shapely.make_valid(geom)
            repairs.append(f"{where}: invalid geometry repaired with make_valid ({reason})")
        polys = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type in ("Polygon", "MultiPolygon")]
        if not polys:
            repairs.append(f"{where}: no polygonal area left after repair; skipped")
            continue
        geoms.append(shapely.union_all(polys))
    return geoms, repairs
