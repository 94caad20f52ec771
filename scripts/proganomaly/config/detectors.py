"""Named detectors: each one's config is the top-level config with its `detectors.NAME` entry merged over it.

A detector owns the sections of DETECTOR_SECTIONS (its patch grid, records, model, training, calibration, scoring,
export and inference); everything else (tissue detection, stain, stitching, evaluation, report, resources) is the
run's, shared by every detector. With no `detectors` mapping there is one detector, MAIN, made of the top-level
sections, so a config written before detectors existed is the one-detector case unchanged.

Every merged detector config is validated against the whole schema and passes the cross-key checks, so a rule of one
detector gets the same guarantees as the top-level config; errors name the entry's key (detectors.NAME.section.key).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

from proganomaly.config.build import ConfigError, schema_error
from proganomaly.config.checks import check_cross_keys
from proganomaly.config.sections import Config

MAIN = "main"
DETECTOR_NAME_PATTERN = r"[a-z][a-z0-9_]*"
DETECTOR_SECTIONS = ("tiling", "records", "model", "training", "calibration", "scoring", "export", "inference")
# The patch grid is the detector's; the tissue mask under it is detected once per slide (tile_slide), so the other
# tiling keys (thumbnail_mpp, tissue) are shared.
GRID_KEYS = ("patch_size_px", "target_mpp", "stride_px", "min_tissue_fraction")


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """A copy of base with override's leaves put over it (mappings merged key by key, anything else replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def detector_configs(config: Mapping) -> dict[str, dict]:
    """{name: the validated raw config of that detector}, in the order of `detectors` (or {MAIN: config}).

    `config` must be validated (defaults filled). A detector's config has no `detectors` of its own.
    """
    entries = config.get("detectors") or {MAIN: {}}
    base = {key: value for key, value in config.items() if key != "detectors"}
    out = {}
    for name, entry in entries.items():
        where = f"detectors.{name}"
        if not re.fullmatch(DETECTOR_NAME_PATTERN, str(name)):
            raise ConfigError(f"{where}: a detector name must match {DETECTOR_NAME_PATTERN} (it is a path component)")
        entry = entry or {}
        shared = sorted(set(entry.get("tiling") or {}) - set(GRID_KEYS))
        if shared:
            raise ConfigError(
                f"{where}.tiling.{shared[0]}: only the patch grid ({', '.join(GRID_KEYS)}) is per detector; tissue is "
                f"detected once per slide for all detectors, so set tiling.{shared[0]} at the top level"
            )
        merged = {**deep_merge(base, entry), "detectors": {}}
        error = schema_error(merged)
        if error is not None:
            key, message = error
            raise ConfigError(f"config key {where}.{key}: {message}")
        try:
            check_cross_keys(Config.from_dict(merged))
        except ConfigError as exc:
            raise ConfigError(f"detector {name} ({where} merged over the top-level config): {exc}") from None
        out[name] = merged
    return out
