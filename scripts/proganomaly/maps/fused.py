"""The fused maps of a slide: several detectors' stitched d² maps on one map grid → one score, flags, KDE and every
map downstream reads, in the layout stitch_maps writes for one detector (maps/*.tif, *.u16.tif, overview/*.png,
maps.json), so evaluation, QuPath export and the report need not know how many detectors there were.

The fused score is −log₁₀ of the combined tail probability (proganomaly.maps.fusion); it is written as both
mahalanobis_d2.tif and anomaly_map.tif, the two score maps downstream reads, and maps.json says so. The thumbnail,
reconstruction and tissue maps are the primary detector's (the first configured; every detector's thumbnail and
tissue are the same slide on the same grid); coverage is the union of the detectors'.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import tifffile

from proganomaly.maps import fusion, stitching
from proganomaly.maps.slidemaps import KdeParams, flagged_fraction, output_dirs, write_map_set


def read_level0(path: str | Path) -> np.ndarray:
    """Level 0 of a map pyramid (whole: the fused maps are formed at the map grid, as evaluation reads them)."""
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[0].asarray()


def grid_of(meta: dict) -> stitching.MapGrid:
    """The map grid a maps.json describes."""
    return stitching.MapGrid(
        width_l0=int(meta["level0_width"]), height_l0=int(meta["level0_height"]),
        downsample=int(meta["downsample"]), mpp=meta["level0_mpp"],
    )  # fmt: skip


def check_same_grid(metas: list[dict], names: list[str]) -> stitching.MapGrid:
    grids = {name: grid_of(m) for name, m in zip(names, metas, strict=True)}
    first = next(iter(grids.values()))
    differ = {n: g for n, g in grids.items() if g != first}
    if differ:
        raise fusion.FusionError(
            f"detectors' maps are on different grids ({grids}): stitching.map_mpp must be shared by every detector"
        )
    return first


def read_json(paths) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def read_thresholds(paths) -> dict[str, dict]:
    """{path: threshold.json} of the detectors, in their order: read once, used for every slide."""
    return dict(zip(map(str, paths), read_json(paths), strict=True))


def fused_score(d2_paths, map_jsons, thresholds, method: str) -> tuple[np.ndarray, list[dict]]:
    """`slide_score` from the files: each detector's maps.json and threshold.json read here."""
    return slide_score(d2_paths, read_json(map_jsons), read_thresholds(thresholds), method)


def standardisation_of(meta: dict) -> dict:
    """A detector's slide standardisation record from its maps.json (none when it does not standardise)."""
    return meta.get("slide_standardisation") or {"method": "none"}


# pixels.parquet's column of one detector's own score (evaluate_slide, with several detectors). "detector" is not a
# part level (evaluation.classes.LEVELS), so these columns are never taken for a class's or group's labels.
DETECTOR_PREFIX = "detector:"


def detector_column(name: str) -> str:
    return f"{DETECTOR_PREFIX}{name}"


def detector_score(d2: np.ndarray, meta: dict, threshold: dict, pick: np.ndarray) -> np.ndarray:
    """One detector's own score at flat indices `pick` of its d² map: −log₁₀ of the tail probability the fusion gives
    it (`fusion.detector_pvalues`), so that its ranking is judged on the calibrated scale the fused score combines,
    per-slide offsets removed as there. `meta`: its maps.json of the slide; `threshold`: its threshold.json. NaN where
    the detector did not score the pixel."""
    d2 = np.asarray(d2, np.float64).ravel()[pick]
    return -np.log10(fusion.detector_pvalues(d2, standardisation_of(meta), threshold))


def slide_score(d2_paths, metas: list[dict], thresholds: dict[str, dict], method: str) -> tuple[np.ndarray, list[dict]]:
    """The slide's fused score map and, per detector, what its p-values came from. `metas`: each detector's maps.json
    of the slide; `thresholds`: {path: each detector's threshold.json}, in the detectors' order (read once per run)."""
    pvalues, used = [], []
    for d2_path, meta, (th_path, th) in zip(d2_paths, metas, thresholds.items(), strict=True):
        std = standardisation_of(meta)
        p = fusion.detector_pvalues(read_level0(d2_path).astype(np.float64), std, th)
        pvalues.append(p)
        finite = p[np.isfinite(p)]
        used.append({
            "d2": str(d2_path), "threshold": str(th_path), "score": "robust z" if std.get("method") == "robust" else "d2",
            "median_p": float(np.median(finite)) if finite.size else None,
            "share_p_below_0.001": float((finite < 1e-3).mean()) if finite.size else None,
        })  # fmt: skip
    return fusion.fused_score(pvalues, method), used


def write_fused_maps(
    score: np.ndarray, tau: float, primary_maps_dir: str | Path, coverage_paths, grid: stitching.MapGrid,
    maps_dir: str | Path, overview_dir: str | Path, *, kde: KdeParams, tile_px: int, rgb_compression: str,
    overview_max_px: int, work_tile_px: int, progress=None,
) -> dict:  # fmt: skip
    """Every map of the slide from the fused score and τ; returns maps.json's content (without provenance)."""
    primary = Path(primary_maps_dir)
    maps_dir, overview_dir, work = output_dirs(maps_dir, overview_dir)
    arrays = {name: read_level0(primary / f"{name}.tif") for name in ("thumbnail", "reconstruction", "tissue")}
    coverage = np.zeros(score.shape, bool)
    for path in coverage_paths:
        coverage |= read_level0(path) > 0
    arrays["coverage"] = np.where(coverage, 255, 0).astype(np.uint8)
    arrays["mahalanobis_d2"] = arrays["anomaly_map"] = score
    arrays["flags"] = fusion.flags_of(score, tau)
    tissue = arrays["tissue"] > 0
    weight = (tissue & np.isfinite(score)).astype(np.float32)
    n_tissue, n_unscored = int(tissue.sum()), int((tissue & ~np.isfinite(score)).sum())
    out = write_map_set(
        arrays, weight, grid, maps_dir, overview_dir, work, kde=kde, tile_px=tile_px, rgb_compression=rgb_compression,
        overview_max_px=overview_max_px, work_tile_px=work_tile_px, progress=progress,
    )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return {
        **out,
        "tissue_pixels": n_tissue,
        "unscored_tissue_pixels": n_unscored,
        "unscored_tissue_fraction": n_unscored / n_tissue if n_tissue else None,
        "score": "fused: -log10 of the detectors' combined tail probability (mahalanobis_d2.tif and anomaly_map.tif "
        "both hold it); flags = score > the fused tau",
        "slide_standardisation": {
            "method": "fused",
            "tau": float(tau),
            "flagged_fraction": flagged_fraction(arrays["flags"], weight),
        },
    }
