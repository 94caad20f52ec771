"""Reading the evaluation's inputs: stitched maps, the tissue region, annotations (GeoJSON or mask image).

Every check that can fail runs before the grid sweep, and every error names the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import tifffile
from PIL import Image
from shapely.geometry.base import BaseGeometry

from proganomaly.common.io import atomic_path
from proganomaly.data.geojson import read_polygons
from proganomaly.evaluation import classes, geometry
from proganomaly.evaluation.grid import Region

MASK_SUFFIXES = (".png", ".tif", ".tiff")


class EvaluationInputError(ValueError):
    """An input of the evaluation is missing or inconsistent; the message names the file."""


def read_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EvaluationInputError(f"{path}: missing (run the stage that writes it first)") from None
    except json.JSONDecodeError as err:
        raise EvaluationInputError(
            f"{path}: not valid JSON ({err}); delete it and rerun the stage that writes it"
        ) from None


def map_info(path: str | Path) -> dict:
    """downsample, width, height and mpp of the stitched maps (maps.json)."""
    info = read_json(path)
    missing = [k for k in ("downsample", "width", "height") if k not in info]
    if missing:
        raise EvaluationInputError(f"{path}: lacks {missing}; rerun stitching")
    if not float(info["downsample"]) > 0:
        raise EvaluationInputError(f"{path}: downsample must be > 0, got {info['downsample']!r}")
    return info


def read_map(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Level 0 of a (pyramidal) map TIFF as float32 (H, W); colour maps are averaged over channels.

    Float maps keep their NaN: "not scored" (no patch interior covered the pixel; see maps/slidemaps.py).
    """
    try:
        with tifffile.TiffFile(path) as tif:
            arr = tif.series[0].levels[0].asarray()
    except FileNotFoundError:
        raise EvaluationInputError(f"{path}: missing (run stitching first)") from None
    except tifffile.TiffFileError as err:
        raise EvaluationInputError(f"{path}: not a readable TIFF ({err}); rerun stitching") from None
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr.mean(axis=-1, dtype=np.float32)
    if arr.ndim != 2:
        raise EvaluationInputError(f"{path}: expected a 2-D map, got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise EvaluationInputError(f"{path}: shape {arr.shape} differs from maps.json height×width {tuple(shape)}")
    return arr


def read_patches(path: str | Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path, columns=["x", "y", "width", "height"])
    except FileNotFoundError:
        raise EvaluationInputError(f"{path}: missing (run tiling first)") from None
    except (KeyError, ValueError) as err:
        raise EvaluationInputError(f"{path}: needs columns x, y, width, height ({err})") from None
    if len(df) == 0:
        raise EvaluationInputError(f"{path}: no tissue patches, so there is no tissue region to evaluate in")
    return df


def tissue_region(patches: pd.DataFrame) -> BaseGeometry:
    return geometry.boxes_region(patches["x"], patches["y"], patches["width"], patches["height"])


def slide_mpp(qc: dict, path: str | Path) -> float:
    mpp = qc.get("mpp")
    if not isinstance(mpp, (int, float)) or not mpp > 0:
        raise EvaluationInputError(
            f"{path}: no positive 'mpp' (set the slide's mpp in the slide sheet and rerun tiling)"
        )
    return float(mpp)


def slide_width(qc: dict) -> float | None:
    """Level-0 width from a tiling QC record, whichever way it spells it."""
    for key in ("width", "slide_width", "level0_width"):
        if isinstance(qc.get(key), (int, float)):
            return float(qc[key])
    dims = qc.get("dimensions") or qc.get("slide_dimensions")
    if isinstance(dims, dict) and isinstance(dims.get("width"), (int, float)):
        return float(dims["width"])
    if isinstance(dims, (list, tuple)) and dims:
        return float(dims[0])
    return None


def scored_tissue(tissue: np.ndarray, scored_map: np.ndarray) -> tuple[np.ndarray, dict]:
    """Tissue pixels that were scored (finite in `scored_map`, the d² map) and how many tissue pixels were not.

    Pixel statistics (AUROC, AP, pixel shares) use only the returned mask: an unscored pixel has no model output,
    and counting it as a 0 would make it a perfect negative.
    """
    tissue = np.asarray(tissue, bool)
    scored = tissue & np.isfinite(scored_map)
    n_tissue, n_scored = int(tissue.sum()), int(scored.sum())
    return scored, {
        "tissue_pixels": n_tissue,
        "scored_tissue_pixels": n_scored,
        "unscored_tissue_pixels": n_tissue - n_scored,
        "unscored_tissue_fraction": (n_tissue - n_scored) / n_tissue if n_tissue else None,
    }


def scored_tissue_pixels(tissue: np.ndarray, scored_map: np.ndarray) -> tuple[np.ndarray, dict]:
    """Flat indices of the scored tissue pixels (`scored_tissue`) and its counts, for pixel sampling."""
    mask, counts = scored_tissue(tissue, scored_map)
    return np.flatnonzero(mask), counts


def write_tables(df: pd.DataFrame, parquet: str | Path, csv: str | Path) -> None:
    """The same table as Parquet and CSV, each written atomically."""
    for path, writer in ((parquet, df.to_parquet), (csv, df.to_csv)):
        with atomic_path(path) as tmp:
            writer(tmp, index=False)


def read_annotation(
    path: str | Path, classes: list[str] | None = None, mask_downsample: float | None = None, level0_width=None
) -> tuple[BaseGeometry, list[str]]:
    """The annotated region in level-0 px and the list of repairs made.

    GeoJSON (QuPath export; Polygon/MultiPolygon with holes) or a mask image (PNG/TIFF, nonzero = annotated) at
    `mask_downsample`, or, when that is None, at the downsample implied by `level0_width` / the mask width.
    """
    path = Path(path)
    if path.suffix.lower() in MASK_SUFFIXES:
        return _mask_annotation(path, mask_downsample, level0_width), []
    geoms, repairs = read_polygons(path, set(classes) if classes else None)
    if not geoms:
        if not repairs and not classes:
            # An empty FeatureCollection is a reviewed normal slide ("nothing anomalous"), not a defect to report.
            return geometry.EMPTY, []
        return geometry.EMPTY, [*repairs, f"{path}: no polygonal annotation (after class filter {classes})"]
    return shapely.union_all(geoms), repairs


def _mask_annotation(path: Path, downsample: float | None, level0_width) -> BaseGeometry:
    try:
        with Image.open(path) as im:
            mask = np.asarray(im)
    except FileNotFoundError:
        raise EvaluationInputError(f"{path}: annotation mask does not exist (fix the 'annotations' column)") from None
    except OSError as err:
        raise EvaluationInputError(f"{path}: not a readable image ({err})") from None
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=-1)
    if downsample is None:
        if level0_width is None:
            raise EvaluationInputError(
                f"{path}: cannot infer the mask's downsample (no slide width); set evaluation.annotation_mask_downsample"
            )
        downsample = float(level0_width) / mask.shape[1]
    polys = geometry.mask_polygons(mask != 0)
    return shapely.union_all(geometry.scale_coords(polys, downsample)) if polys else geometry.EMPTY


@dataclasses.dataclass
class SlideInputs:
    """Everything the evaluation of one slide reads, checked: the KDE map and its grid, the tissue region, the
    annotation (all classes, clipped to tissue in `region`) and its parts {(level, name): region in tissue}."""

    slide: str
    kde: np.ndarray
    downsample: float
    shape: tuple[int, int]
    info: dict
    mpp: float
    patches: pd.DataFrame
    region: Region
    annotation: BaseGeometry
    parts: dict
    groups: dict[str, str]
    repairs: list[str]
    # Tissue pixels (patch boxes, pixel-centre rule) with a finite d², i.e. scored; None without a d² input.
    scored_tissue: np.ndarray | None = None
    scored_counts: dict = dataclasses.field(default_factory=dict)

    @property
    def unscored_tissue_fraction(self) -> float | None:
        """Share of the tissue pixels that no patch interior covered (NaN in the maps), for metrics.json."""
        return self.scored_counts.get("unscored_tissue_fraction")


def load_slide(inp, ev, slide: str, log) -> SlideInputs:
    """Read and check one slide's evaluation inputs (rule input names: maps, qc, patches, annotations, kde)."""
    info = map_info(inp.maps)
    ds, shape = float(info["downsample"]), (int(info["height"]), int(info["width"]))
    qc = read_json(inp.qc)
    mpp = slide_mpp(qc, inp.qc)
    patches = read_patches(inp.patches)
    if not inp.annotations:
        raise ValueError(f"slide {slide} has no annotations in the slide sheet; it cannot be evaluated")
    path = Path(inp.annotations[0])
    annotation, repairs = read_annotation(path, ev.annotation_classes, ev.annotation_mask_downsample, slide_width(qc))
    for line in repairs:
        log.warning("annotation: %s", line)
    if path.suffix.lower() in MASK_SUFFIXES:
        regions, groups = {classes.UNCLASSIFIED: annotation}, {classes.UNCLASSIFIED: classes.UNCLASSIFIED}
    else:
        try:
            regions, groups = classes.class_regions(path, ev.annotation_classes)
        except classes.AnnotationClassError as err:
            raise EvaluationInputError(str(err)) from None
    tissue = tissue_region(patches)
    region = Region.clipped(tissue, annotation)
    parts = {k: shapely.intersection(g, tissue) for k, g in classes.part_regions(regions, groups).items()}
    kde = read_map(inp.kde, shape)
    finite = kde[np.isfinite(kde)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        log.warning("%s: values outside [0, 1] (%.4g..%.4g); thresholds assume a [0, 1] KDE", inp.kde, finite.min(), finite.max())  # fmt: skip
    log.info(
        "%s: map %dx%d at downsample %g, mpp %g; tissue %.4g µm² from %d patches; annotation %.4g µm² (%.4g in "
        "tissue); classes %s",
        slide, shape[1], shape[0], ds, mpp, tissue.area * mpp**2, len(patches), annotation.area * mpp**2,
        region.annotation.area * mpp**2, groups,
    )  # fmt: skip
    scored, counts = None, {}
    d2_path = getattr(inp, "mahalanobis_d2", None)
    if d2_path:
        tissue_px = geometry.boxes_mask(patches["x"], patches["y"], patches["width"], patches["height"], shape, ds)
        scored, counts = scored_tissue(tissue_px, read_map(d2_path, shape))
        if "nodata" not in info:
            log.warning("%s: stitched before unscored pixels became NaN (0 there); restitch for exact pixel metrics", inp.maps)  # fmt: skip
        log.info("%s: %d of %d tissue pixels not scored (%.2f %%)", slide, counts["unscored_tissue_pixels"],
                 counts["tissue_pixels"], 100 * (counts["unscored_tissue_fraction"] or 0.0))  # fmt: skip
    return SlideInputs(
        slide, kde, ds, shape, info, mpp, patches, region, annotation, parts, groups, repairs, scored, counts
    )
