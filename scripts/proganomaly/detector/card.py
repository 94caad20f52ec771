"""The exported detector's model card: what it is and what it was made from, with checksums; and the check that a
detector folder fits the config that screens slides with it (screening mode, `detector: PATH`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from proganomaly.common.io import sha256_file

CARD_FILE = "model_card.json"
SAVED_MODEL_DIR = "saved_model"
# The config keys a detector's outputs depend on beyond its weights: export_model records them in the card's
# "config" (its rule lists them in its params), and a screening config must give the same values.
SCREENING_KEYS = (
    "tiling.patch_size_px",
    "tiling.target_mpp",
    "calibration.scorer",
    "calibration.border_px",
    "stain.normalisation",
)


def model_card(
    *,
    config: dict,
    metadata: dict,
    model_files: dict,
    manifests: dict,
    error_distribution: dict,
    threshold: dict,
    slide_mpp: list | None = None,
) -> dict:
    """Files with sha256, statistics, τ and the serving interface. `slide_mpp`: the level-0 µm/px of the slides its
    records came from (what a screened slide must match when tiling.target_mpp is null)."""

    def files(paths):
        return [{"path": str(p), "sha256": sha256_file(p)} for p in paths]

    return {
        "name": "proganomaly detector",
        "architecture": metadata["architecture"],
        "scorer": metadata["scorer"],
        "patch_size_px": metadata["patch_size_px"],
        # τ at the top level too, where plot_slide reads it from threshold.json
        "tau": metadata["tau"],
        # τ_z and its method at the top level too, where stitch_maps reads them (threshold.tau_z_of) when screening with
        # calibration.slide_standardisation: robust; None when the threshold was fitted without it
        "tau_z": threshold.get("tau_z"),
        "slide_standardisation": _standardisation(threshold),
        "slide_mpp": sorted(set(slide_mpp)) if slide_mpp else None,
        "serving": {
            "signature": "serving_default",
            "input": metadata["input"],
            "outputs": metadata["outputs"],
            "value_range": metadata["value_range"],
            "jit_compile": metadata["jit_compile"],
            "loader": "proganomaly.detector.load.load_detector(path) checks shape and dtype",
        },
        "model_files": {name: files([p])[0] for name, p in model_files.items()},
        "data_manifests": {split: files(paths) for split, paths in manifests.items()},
        "error_distribution": {
            k: error_distribution.get(k)
            for k in (
                "scorer",
                "n_pixels",
                "n_patches",
                "mean",
                "covariance",
                "precision",
                "precision_cholesky",
                "shrinkage",
                "one_sided",
                "channel_directions",
                "warnings",
            )
        }
        | {"directions": metadata.get("directions"), "channels": metadata.get("anomaly_map_channels")},
        "threshold": {
            "tau": metadata["tau"],
            "method": threshold.get("method"),
            "unsupervised": threshold.get("unsupervised"),
            "supervised": threshold.get("supervised"),
            "tau_z": threshold.get("tau_z"),
            "slide_standardisation": _standardisation(threshold),
        },
        "config": config,
    }


def _standardisation(threshold: dict) -> dict:
    """threshold.json's "slide_standardisation" without its z histogram (the per-slide medians and τ_z records stay)."""
    record = threshold.get("slide_standardisation") or {"method": "none"}
    return {k: v for k, v in record.items() if k != "z_histogram_normal"}


class CardError(ValueError):
    """A detector folder that screening cannot use; the message names the key, the card's value and the fix."""


def _at(mapping: Mapping, path: str):
    for key in path.split("."):
        if not isinstance(mapping, Mapping) or key not in mapping:
            raise KeyError(path)
        mapping = mapping[key]
    return mapping


def _same(a, b) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool | None):
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    return a == b


def read_card(folder: str | Path) -> dict:
    """The card of a detector folder, after checking the folder has the SavedModel and a well-formed card."""
    folder = Path(folder)
    fix = "set detector to a folder written by export_model (results/detectors/NAME/export of a training run, copied elsewhere)"
    if not folder.is_dir():
        raise CardError(f"detector: {folder} is not a folder; {fix}")
    if not (folder / SAVED_MODEL_DIR / "saved_model.pb").is_file():
        raise CardError(f"detector: {folder} has no {SAVED_MODEL_DIR}/saved_model.pb (the SavedModel); {fix}")
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise CardError(f"detector: {folder} has no {CARD_FILE} (the model card export_model writes beside it); {fix}")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"detector: {card_path} is not valid JSON ({exc}); re-export the detector") from None
    if not isinstance(card, dict) or not isinstance(card.get("config"), dict):
        raise CardError(f'detector: {card_path} has no "config" mapping; not a proganomaly model card: re-export it')
    return card


def check_detector(folder: str | Path, config: Mapping, scorers: list[str], sheet_mpp: Mapping | None = None) -> dict:
    """The card of `folder` if the config (validated, defaults filled) can screen with it; else CardError.

    `scorers`: the scorer names this version knows (calibration.scorer's enum). `sheet_mpp`: {slide: the sheet's mpp
    override or None}; checked against the card's training slides when the detector tiles at native resolution.
    """
    card = read_card(folder)
    card_path = Path(folder) / CARD_FILE
    for key in SCREENING_KEYS:
        try:
            theirs = _at(card["config"], key)
        except KeyError:
            raise CardError(
                f"detector: {card_path} does not record {key} (exported before screening was supported); re-export"
                " it with this version's export_model"
            ) from None
        if key == "calibration.scorer" and theirs not in scorers:
            raise CardError(
                f"detector: {card_path} has calibration.scorer {theirs!r}, which this version does not know (valid:"
                f" {', '.join(scorers)}); screen with the version that exported it, or re-export"
            )
        ours = _at(config, key)
        if not _same(ours, theirs):
            raise CardError(
                f"detector: config {key} is {ours!r} but the detector's model card ({card_path}) says {theirs!r}: set"
                f" {key}: {json.dumps(theirs)} in the config you screen with (the one it was trained with), or use a"
                " detector trained with the config's value"
            )
    size = card.get("patch_size_px")
    if size is not None and not _same(size, _at(card["config"], "tiling.patch_size_px")):
        raise CardError(
            f"detector: {card_path} has patch_size_px {size} but its config tiling.patch_size_px"
            f" {_at(card['config'], 'tiling.patch_size_px')}: the card is inconsistent; re-export the detector"
        )
    trained_mpp = card.get("slide_mpp") or []
    if _at(config, "tiling.target_mpp") is None and trained_mpp:
        for slide, mpp in (sheet_mpp or {}).items():
            if mpp is not None and not any(_same(mpp, m) for m in trained_mpp):
                raise CardError(
                    f"detector: slide {slide} has mpp {mpp} in the slide sheet, but tiling.target_mpp is null and the"
                    f" detector ({card_path}) was trained on slides at {trained_mpp} µm/px: set tiling.target_mpp (in"
                    " the training config too) so that patches are resampled, or screen slides of that resolution"
                )
    return card
