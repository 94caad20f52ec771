"""Annotation classes and groups: the per-class ground truth of the evaluation.

Each GeoJSON feature's class is its QuPath classification (`properties.classification.name`; "Unclassified" when it
has none, and for mask images); its group is the top-level property `anomaly_group` (e.g. "foreign stain",
"same-stain tissue", "artefact"), or the class itself when absent. A part is one class or one group, keyed
(level, name) with level "class" or "group".

Per-part definition, the same at pixel and at polygon level: a part's positives are its own annotated tissue, the
negatives are normal tissue (tissue outside every annotation), and other parts' regions are left out. For polygons
this means: TP = prediction ∩ part, FN = part \\ prediction, FP = prediction ∩ normal tissue, TN = normal tissue \\
prediction; so a part's FP and TN equal the all-classes FP and TN, and only TP and FN depend on the part.

A file with zero features is valid: a slide reviewed with nothing anomalous on it (a normal-only slide); it has no
classes, no groups and no regions.
"""

from __future__ import annotations

import json
from pathlib import Path

import shapely
from shapely.geometry.base import BaseGeometry

from proganomaly.data.geojson import read_polygons

UNCLASSIFIED = "Unclassified"
LEVELS = ("class", "group")


class AnnotationClassError(ValueError):
    """The annotation classes cannot be read consistently; the message names the file and the class."""


def feature_classes(path: str | Path, classes: list[str] | None = None) -> dict[str, str]:
    """{class: group} of the file's features, in first-appearance order (features filtered by `classes`)."""
    doc = json.loads(Path(path).read_text())
    feats = doc.get("features", []) if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else doc
    feats = [feats] if isinstance(feats, dict) else feats
    groups: dict[str, str] = {}
    for i, feat in enumerate(feats or []):
        props = (feat or {}).get("properties") or {}
        name = (props.get("classification") or {}).get("name")
        if classes is not None and name not in classes:
            continue
        cls = name or UNCLASSIFIED
        # The brief's property is top-level; QuPath keeps custom ones under properties, so accept both.
        group = feat.get("anomaly_group") or props.get("anomaly_group") or cls
        if groups.setdefault(cls, group) != group:
            raise AnnotationClassError(
                f"{path}: feature {i} of class {cls!r} has anomaly_group {group!r}, earlier ones {groups[cls]!r}; "
                "give every feature of a class the same group"
            )
    return groups


def class_regions(path: str | Path, classes: list[str] | None = None) -> tuple[dict[str, BaseGeometry], dict]:
    """({class: its annotated region}, {class: group}) of a GeoJSON file; classes without polygons are dropped."""
    groups = feature_classes(path, classes)
    regions = {}
    for cls in groups:
        # read_polygons filters on the raw classification name; None selects the unclassified features.
        geoms, _ = read_polygons(path, {None if cls == UNCLASSIFIED else cls})
        if geoms:
            regions[cls] = shapely.union_all(geoms)
    return regions, {c: g for c, g in groups.items() if c in regions}


def feature_regions(path: str | Path, classes: list[str] | None = None) -> list[tuple[BaseGeometry, str, str]]:
    """(region, class, group) of every polygonal feature (each one annotated region, a lesion), grouped by class
    in first-appearance order; the same features and repairs as `class_regions`."""
    groups = feature_classes(path, classes)
    out = []
    for cls, group in groups.items():
        geoms, _ = read_polygons(path, {None if cls == UNCLASSIFIED else cls})
        out += [(g, cls, group) for g in geoms if not g.is_empty]
    return out


def part_regions(regions: dict[str, BaseGeometry], groups: dict[str, str]) -> dict[tuple[str, str], BaseGeometry]:
    """{(level, name): region} for every class and every group (a group is the union of its classes)."""
    parts = {("class", c): g for c, g in regions.items()}
    for group in dict.fromkeys(groups.values()):
        parts[("group", group)] = shapely.union_all([regions[c] for c, g in groups.items() if g == group])
    return parts


def column(level: str, name: str) -> str:
    """Column of a part's pixel labels in pixels.parquet."""
    return f"{level}:{name}"


def parse_column(col: str) -> tuple[str, str] | None:
    level, sep, name = col.partition(":")
    return (level, name) if sep and level in LEVELS else None
