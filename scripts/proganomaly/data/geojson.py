"""QuPath-compatible GeoJSON in and out (level-0 pixel coordinates).

Written features follow QuPath's GeoJSON: ``properties.objectType`` ("annotation" or "tile"), ``classification``
{name, color} and numeric ``measurements``; each carries a UUID ``id`` derived from the slide and its index (uuid5),
so a rerun writes the same bytes. Predicted polygons get their own class, "<class> (predicted)", so they never mix
with the pathologist's annotations of the same class in QuPath.
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
# Per-patch columns of results/slides/{slide}/patches.parquet exported as tile measurements (those present).
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
                   **metadata) -> None:  # fmt: skip
    """One QuPath annotation per non-empty geometry; `measurements[i]` (optional) is attached to geoms[i].

    Feature ids are uuid5 of the `slide_id` metadata (else the file name) and the geometry's index.
    """
    if measurements is not None and len(measurements) != len(geoms):
        raise ValueError(f"{len(measurements)} measurement records for {len(geoms)} geometries")
    meas = measurements or [{}] * len(geoms)
    key = str(metadata.get("slide_id", Path(path).name))
    feats = [
        feature(g, name, color, fid=feature_id(key, "annotation", i), **m)
        for i, (g, m) in enumerate(zip(geoms, meas, strict=True))
        if not g.is_empty
    ]
    write_features(path, feats, **metadata)


def tile_features(patches, slide_id: str) -> list[dict]:
    """One locked QuPath tile per patch (its level-0 box), with the per-patch scores as measurements.

    patches: a frame with x, y, width, height and any of TILE_MEASUREMENTS (results/slides/{slide}/patches.parquet).
    """
    missing = [c for c in ("x", "y", "width", "height") if c not in patches.columns]
    if missing:
        raise ValueError(f"per-patch table of slide {slide_id} lacks columns {missing}; re-run infer_slide")
    names = [c for c in TILE_MEASUREMENTS if c in patches.columns]
    cols = {c: patches[c].to_numpy() for c in ("x", "y", "width", "height", *names)}
    feats = []
    for i in range(len(patches)):
        x, y, w, h = (float(cols[c][i]) for c in ("x", "y", "width", "height"))
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
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


def write_tiles(path: str | Path, patches, slide_id: str, **metadata) -> None:
    """results/slides/{slide}/tiles.geojson: every inferred patch as a QuPath tile with its scores."""
    write_features(path, tile_features(patches, slide_id), slide_id=slide_id, coordinates="level-0 px", **metadata)


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
