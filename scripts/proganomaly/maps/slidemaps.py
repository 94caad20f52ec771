"""Turn a slide's inference canvases into its maps: OME-TIFF pyramids, PNG overviews and the KDE heat map.

Float maps also get a uint16 rendition (``{name}.u16.tif``) for viewers that do not read float samples.

"Not scored": a map pixel that no patch interior covers (beyond the tissue, or in the border_px rim that calibration
drops at the edge of the tiled area) has no model output. Float maps hold NaN there (their pyramids average only
scored pixels), the uint16 renditions count 0 (rendition.NODATA), the overview PNGs are transparent there and
kde_color shows NO_DATA_RGB (a neutral grey that the turbo colour map never produces).

Every step goes through band- or tile-sized pieces of on-disk arrays, so memory stays flat whatever the slide size.

With a τ_z (calibration.slide_standardisation: robust) the flags map is not the SavedModel's raw d² > τ averaged
over overlapping patches but 1 where the stitched d² map's robust z, (d² − median) / (1.4826 · MAD) over the slide's
scored tissue, exceeds τ_z (0 elsewhere, NaN where d² is NaN); the KDE is made from those flags as before.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..calibration import threshold as thresholdlib
from . import kde as kdelib
from . import rendition, stitching
from .colormap import apply_turbo
from .names import FLOAT_MAPS, FRACTION_MAPS, MAP_NAMES, MASK_MAPS, RENDITION_SUFFIX, RGB_MAPS

log = logging.getLogger("proganomaly.maps.slidemaps")

NO_DATA_RGB = (128, 128, 128)
NODATA = {
    "float_maps": "NaN: not scored (no patch interior covers the pixel; for kde: no scored tissue within the kernel)",
    "renditions": f"count {rendition.NODATA}; value = (count - {rendition.OFFSET}) * value_per_count otherwise",
    "kde_color": f"RGB {list(NO_DATA_RGB)} where kde is NaN",
    "overview_png": "alpha 0 (transparent) where the map is NaN",
}


# Median and MAD of d² come from at most this many scored-tissue pixels of the map (every one when there are fewer; a
# seeded uniform draw otherwise: the sample median's standard error is ~1/√n of the spread, far below a d² bin).
MAX_ROBUST_VALUES = 5_000_000
ROBUST_SEED = 20240618


@dataclass(frozen=True)
class KdeParams:
    method: str  # "slide" or "patch"
    bandwidth_um: float
    truncate: float
    min_object_um2: float
    ceiling: float


def write_slide_maps(
    canvas_dir: str | Path,
    maps_dir: str | Path,
    overview_dir: str | Path,
    *,
    tissue_mask: np.ndarray | None,
    tissue_downsample: float,
    kde: KdeParams,
    tile_px: int = 256,
    rgb_compression: str = "deflate",
    overview_max_px: int = 2000,
    work_tile_px: int = 1024,
    progress=None,
    tau_z: float | None = None,
) -> dict:
    """Write `maps_dir/{name}.tif` and `overview_dir/{name}.png` for every map, and `maps_dir/{name}.u16.tif` for
    every float map; return the maps.json content. `tau_z`: flag by the slide's robust z of d² (module docstring);
    None keeps the SavedModel's flags."""

    canvas, meta = stitching.open_canvas(canvas_dir)
    grid = canvas.grid
    if grid.mpp is None:
        raise ValueError(f"{canvas_dir}: the slide has no mpp; give it in the slide sheet's mpp column")
    maps_dir, overview_dir, work = output_dirs(maps_dir, overview_dir)
    if meta.get("patches", None) == 0:
        log.warning("%s: no tissue patches were inferred; writing empty maps", canvas_dir)

    arrays: dict[str, stitching.DiskArray] = {}
    for name in ("thumbnail", "reconstruction"):
        # Uncovered background shows white, as on a slide; the coverage map tells it apart from white tissue.
        arrays[name] = stitching.finalize_map(canvas, name, work / f"{name}.npy", dtype=np.uint8, fill=255)
    for name in ("anomaly_map", "mahalanobis_d2", "flags"):
        arrays[name] = stitching.finalize_map(canvas, name, work / f"{name}.npy", dtype=np.float32, fill=np.nan)
    arrays["coverage"] = stitching.coverage_map(canvas, work / "coverage.npy")
    if tissue_mask is None:
        arrays["tissue"] = arrays["coverage"]
    else:
        arrays["tissue"] = stitching.resample_mask(tissue_mask, tissue_downsample, grid, work / "tissue.npy")
    weight, scored = stitching.scored_tissue(canvas.count, arrays["tissue"], work / "scored_tissue.npy")
    if scored["unscored_tissue_fraction"]:
        log.info("%s: %.2f %% of the tissue pixels were not scored (no patch interior covers them)", canvas_dir,
                 100 * scored["unscored_tissue_fraction"])  # fmt: skip

    robust = robust_location(arrays["mahalanobis_d2"], weight)
    if tau_z is None:
        standardisation = {"method": "none", **robust}
    else:
        if robust["median"] is None:
            log.warning("%s: no scored tissue pixel with a d²; the standardised flags are all NaN", canvas_dir)
        elif robust["scale"] == 0:
            log.warning("%s: half the scored tissue has the same d² (MAD 0): flagging every pixel above the median",
                        canvas_dir)  # fmt: skip
        arrays["flags"] = standardised_flags(arrays["mahalanobis_d2"], robust, tau_z, work / "flags_robust.npy")
        standardisation = {"method": "robust", "tau_z": float(tau_z), **robust}
        if robust["median"] is not None:
            standardisation["tau_slide"] = robust["median"] + tau_z * robust["scale"]
    standardisation["flagged_fraction"] = flagged_fraction(arrays["flags"], weight)
    log.info("%s: median d² %s, MAD %s over the scored tissue; %s of it flagged (%s)", canvas_dir,
             robust["median"], robust["mad"], standardisation["flagged_fraction"], standardisation["method"])  # fmt: skip

    if kde.method == "patch":
        if "kde_patch" not in canvas.sums:
            raise ValueError(
                f"{canvas_dir}: no per-patch KDE canvas; re-run infer_slide with stitching.kde.method=patch"
            )
        arrays["kde"] = stitching.finalize_map(canvas, "kde_patch", work / "kde.npy", dtype=np.float32, fill=np.nan)
    out = write_map_set(
        arrays, weight, grid, maps_dir, overview_dir, work, kde=kde, tile_px=tile_px, rgb_compression=rgb_compression,
        overview_max_px=overview_max_px, work_tile_px=work_tile_px, progress=progress,
    )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return {**out, **scored, "patches": meta.get("patches"), "slide_standardisation": standardisation}


def output_dirs(maps_dir: str | Path, overview_dir: str | Path) -> tuple[Path, Path, Path]:
    """The maps and overview folders, made, and an empty scratch folder for the maps' on-disk arrays."""
    maps_dir, overview_dir = Path(maps_dir), Path(overview_dir)
    maps_dir.mkdir(parents=True, exist_ok=True)
    overview_dir.mkdir(parents=True, exist_ok=True)
    work = maps_dir / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    return maps_dir, overview_dir, work


def write_map_set(
    arrays: dict,
    weight,
    grid: stitching.MapGrid,
    maps_dir: Path,
    overview_dir: Path,
    work: Path,
    *,
    kde: KdeParams,
    tile_px: int = 256,
    rgb_compression: str = "deflate",
    overview_max_px: int = 2000,
    work_tile_px: int = 1024,
    progress=None,
) -> dict:
    """Write every map of MAP_NAMES from `arrays` (all but kde and kde_color, which are made here from the flags and
    the scored-tissue `weight`): pyramids, uint16 renditions and overviews; return maps.json's description of them.

    Shared by a detector's maps (from its canvas) and the fused maps (from several detectors' maps on one grid).
    """
    from .pyramid import write_pyramid

    arrays = dict(arrays)
    sigma_px = kde.bandwidth_um / grid.map_mpp
    min_area_px = kde.min_object_um2 / grid.map_mpp**2
    if kde.method == "slide":
        arrays["kde"] = kdelib.slide_kde(
            arrays["flags"], work, sigma_px=sigma_px, min_area_px=min_area_px, ceiling=kde.ceiling,
            truncate=kde.truncate, tile=work_tile_px, weight=weight,
        )  # fmt: skip
        rule = kdelib.scaling_rule(kde.ceiling)
        definition = kdelib.definition(kde.ceiling)
    elif kde.method == "patch":
        if "kde" not in arrays:
            raise ValueError(
                "stitching.kde.method=patch: the per-patch KDE exists only in one detector's canvas; fused maps need "
                "stitching.kde.method=slide"
            )
        rule = "per-patch KDE of spec 8.3 (per-patch min-max and count scaling), stitched by averaging; not comparable across slides"
        definition = {
            "formula": "the original's per-patch KDE (spec 8.3) of each patch's flags, averaged where patches overlap",
            "weight": "none (glass and tissue inside a patch count alike); NaN where no patch interior covers the pixel",
        }
    else:
        raise ValueError(f"stitching.kde.method={kde.method!r}; choose slide or patch")
    arrays["kde_color"] = _colour(arrays["kde"], work / "kde_color.npy")

    display: dict[str, list[float]] = {}
    renditions: dict[str, dict] = {}
    for name in MAP_NAMES:
        arr = arrays[name]
        compression = rgb_compression if name in RGB_MAPS or name in MASK_MAPS else "deflate"
        if compression == "jpeg" and name in MASK_MAPS:
            compression = "deflate"  # masks must stay exactly 0/255
        description = f"proganomaly {name} map, downsample {grid.downsample} of level 0"
        write_pyramid(
            maps_dir / f"{name}.tif", arr, grid.map_mpp, tile=tile_px, compression=compression,
            description=description, channel_name=name, progress=progress,
        )  # fmt: skip
        if name in FLOAT_MAPS:
            scale = rendition.slide_scale(arr, name in FRACTION_MAPS, work_tile_px)
            renditions[name] = {
                "file": f"{name}{RENDITION_SUFFIX}", "value_per_count": scale, "offset": rendition.OFFSET,
                "nodata": rendition.NODATA, "value": "(count - offset) * value_per_count; count == nodata: not scored",
            }  # fmt: skip
            write_pyramid(
                maps_dir / f"{name}{RENDITION_SUFFIX}", rendition.Quantised(arr, scale), grid.map_mpp, tile=tile_px,
                compression="deflate", description=f"{description}; {rendition.description(scale)}",
                channel_name=name, nodata=rendition.NODATA,
            )  # fmt: skip
        small = stitching.overview(arr, overview_max_px)
        png, display[name] = _overview_png(name, small)
        Image.fromarray(png).save(overview_dir / f"{name}.png")
    return {
        "downsample": grid.downsample,
        "width": grid.width,
        "height": grid.height,
        "level0_width": grid.width_l0,
        "level0_height": grid.height_l0,
        "mpp": grid.map_mpp,
        "level0_mpp": grid.mpp,
        "maps": {name: f"{name}.tif" for name in MAP_NAMES},
        "renditions": renditions,
        "pixel_convention": "map pixel (r, c) covers level-0 [c*ds, (c+1)*ds) x [r*ds, (r+1)*ds)",
        "nodata": NODATA,
        "kde": {
            "method": kde.method,
            "bandwidth_um": kde.bandwidth_um,
            "sigma_map_px": sigma_px,
            "truncate": kde.truncate,
            "min_object_um2": kde.min_object_um2,
            "min_object_map_px": min_area_px,
            "ceiling": kde.ceiling,
            "scaling_rule": rule,
            "definition": definition,
        },
        "overview_display_range": display,
    }


def robust_location(d2, weight, *, max_values: int = MAX_ROBUST_VALUES, seed: int = ROBUST_SEED,
                    band_rows: int = 256) -> dict:  # fmt: skip
    """Median, MAD and scale = 1.4826 · MAD of the d² map over the scored tissue (weight > 0, d² finite), streamed
    in bands: exact (numpy) over every such pixel when they number at most `max_values`, else over a seeded uniform
    draw of about `max_values` of them. Medians are None without a scored pixel."""
    n = 0
    for r0, r1 in stitching.bands(d2.shape[0], band_rows):
        n += int(((np.asarray(weight[r0:r1]) > 0) & np.isfinite(d2[r0:r1])).sum())
    rate = 1.0 if n <= max_values else max_values / n
    rng = np.random.default_rng(seed)
    values = []
    for r0, r1 in stitching.bands(d2.shape[0], band_rows):
        v = np.asarray(d2[r0:r1], np.float64)
        v = v[(np.asarray(weight[r0:r1]) > 0) & np.isfinite(v)]
        values.append(v if rate == 1.0 else v[rng.random(v.size) < rate])
    values = np.concatenate(values) if values else np.zeros(0)
    record = {
        "n_scored_pixels": n,
        "n_used": int(values.size),
        "exact": rate == 1.0,
        "mad_scale": thresholdlib.MAD_SCALE,
    }
    if not values.size:
        return record | {"median": None, "mad": None, "scale": None}
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    return record | {"median": median, "mad": mad, "scale": thresholdlib.MAD_SCALE * mad}


def standardised_flags(d2, robust: dict, tau_z: float, path: Path, band_rows: int = 256) -> stitching.DiskArray:
    """1.0 where the robust z of d² exceeds τ_z, 0.0 where it does not, NaN where d² is NaN (not scored)."""
    out = stitching.DiskArray.create(path, d2.shape, np.float32)
    for r0, r1 in stitching.bands(d2.shape[0], band_rows):
        v = np.asarray(d2[r0:r1])
        if robust["median"] is None:
            out[r0:r1] = np.full(v.shape, np.nan, np.float32)
            continue
        flag = thresholdlib.exceeds(v, robust["median"], robust["scale"], tau_z)
        out[r0:r1] = np.where(np.isnan(v), np.nan, flag).astype(np.float32)
    return out


def flagged_fraction(flags, weight, band_rows: int = 256) -> float | None:
    """Mean of the flags map over the scored tissue (weight > 0, flags finite); None without such pixels."""
    total = n = 0.0
    for r0, r1 in stitching.bands(flags.shape[0], band_rows):
        f = np.asarray(flags[r0:r1], np.float64)
        on = (np.asarray(weight[r0:r1]) > 0) & np.isfinite(f)
        total += float(f[on].sum())
        n += int(on.sum())
    return total / n if n else None


def _colour(kde: stitching.DiskArray, path: Path, band_rows: int = 256) -> stitching.DiskArray:
    out = stitching.DiskArray.create(path, (*kde.shape, 3), np.uint8)
    for r0, r1 in stitching.bands(kde.shape[0], band_rows):
        values = kde[r0:r1]
        out[r0:r1] = np.where(np.isnan(values)[..., None], np.uint8(NO_DATA_RGB), apply_turbo(values))
    return out


def _overview_png(name: str, small: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Image for the report and the value range mapped to its colours (fixed [0, 1] for fractions).

    uint8 maps as they are; float maps as grey + alpha (flags, kde) or RGBA (turbo), transparent where NaN.
    """
    if small.dtype == np.uint8:
        return small, [0.0, 255.0]
    values = np.asarray(small, np.float64)
    alpha = np.where(np.isnan(values), 0, 255).astype(np.uint8)[..., None]
    if name in ("flags", "kde"):
        lo, hi = 0.0, 1.0
    else:
        # d² and anomaly maps are unbounded: show 0 to their 99th percentile where something was inferred.
        positive = values[values > 0]
        lo, hi = 0.0, float(np.percentile(positive, 99)) if positive.size else 1.0
    scaled = np.nan_to_num((values - lo) / (hi - lo if hi > lo else 1.0), nan=0.0)
    if name in ("flags", "kde"):
        # The greyscale maps stay grey (white = 1); kde_color is the coloured one.
        return np.concatenate([np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8)[..., None], alpha], -1), [lo, hi]
    return np.concatenate([apply_turbo(scaled), alpha], -1), [lo, hi]
