"""QuPath-compatible GeoJSON in and out (level-0 pixel coordinates)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

ANOMALY_CLASS = {"name": "Anomaly", "color": [230, 40, 40]}


class GeoJSONError(ValueError):
    """A GeoJSON file cannot be used; the message names the file and the feature."""


def feature(geom: BaseGeometry, name: str, color: list[int], **measurements: float) -> dict:
    """One QuPath annotation feature."""
    props = {"objectType": "annotation", "classification": {"name": name, "color": list(color)}, "isLocked": False}
    if measurements:
        props["measurements"] = {k: float(v) for k, v in measurements.items()}
    return {"type": "Feature", "geometry": mapping(geom), "properties": props}


def write_features(path: str | Path, features: list[dict], **metadata) -> None:
    """Write a FeatureCollection atomically; `metadata` goes into a top-level `proganomaly` member."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"type": "FeatureCollection", "features": features}
    if metadata:
        doc["proganomaly"] = metadata
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def write_polygons(path: str | Path, geoms: list[BaseGeometry], name: str = ANOMALY_CLASS["name"],
                   color: list[int] = ANOMALY_CLASS["color"], measurements: list[dict] | None = None,
                   **metadata) -> None:  # fmt: skip
    """One QuPath annotation per non-empty geometry; `measurements[i]` (optional) is attached to geoms[i]."""
    if measurements is not None and len(measurements) != len(geoms):
        raise ValueError(f"{len(measurements)} measurement records for {len(geoms)} geometries")
    meas = measurements or [{}] * len(geoms)
    feats = [feature(g, name, color, **m) for g, m in zip(geoms, meas, strict=True) if not g.is_empty]
    write_features(path, feats, **metadata)


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
