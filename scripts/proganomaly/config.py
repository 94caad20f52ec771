"""The typed view of the validated configuration.

Defaults live in ``workflow/schemas/config.schema.yaml`` only: the dataclasses below have no defaults, so a config
that skipped validation fails loudly here instead of running with a second, divergent set of defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
SLIDES_SCHEMA = SCHEMA_DIR / "slides.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names its path."""


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    wheel: str
    member: str
    mpp: float
    foreign_per_slide: int
    foreign_size_px: tuple[int, int]
    tile_px: int


@dataclasses.dataclass(frozen=True)
class TissueConfig:
    method: str
    saturation_threshold: float
    closing_um: float
    min_object_um2: float
    min_hole_um2: float


@dataclasses.dataclass(frozen=True)
class TilingConfig:
    patch_size_px: int
    target_mpp: float | None
    stride_px: int
    min_tissue_fraction: float
    thumbnail_mpp: float
    tissue: TissueConfig


@dataclasses.dataclass(frozen=True)
class RecordsConfig:
    min_size_px: int
    shard_max_examples: int
    downscale_method: str

    def resolutions(self, patch_size_px: int) -> list[int]:
        """Resolutions written for a patch size: min_size_px, 2·min_size_px, … patch_size_px."""
        sizes, size = [], self.min_size_px
        while size <= patch_size_px:
            sizes.append(size)
            size *= 2
        if not sizes or sizes[-1] != patch_size_px:
            raise ConfigError(
                f"tiling.patch_size_px={patch_size_px} is not records.min_size_px={self.min_size_px} times a power of two"
            )
        return sizes


@dataclasses.dataclass(frozen=True)
class Config:
    slides: str
    seed: int
    demo: DemoConfig
    tiling: TilingConfig
    records: RecordsConfig
    model: dict
    training: dict
    calibration: dict
    export: dict
    inference: dict
    stitching: dict
    evaluation: dict
    report: dict

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """Build the typed config from a dict that has already been validated (defaults filled)."""
        return _build(cls, data, "config")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}")
        missing = sorted(names - set(value))
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing} (was the config validated against the schema?)")
        return tp(**{name: _build(hints[name], value[name], f"{where}.{name}") for name in names})
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(inner[0], value, where)
    if origin is tuple:
        return tuple(
            _build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(typing.get_args(tp), value, strict=True))
        )
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp in (int, float, str, bool) and not isinstance(value, tp)) or (
        tp in (int, float) and isinstance(value, bool)
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def validate_config(data: dict) -> dict:
    """Validate a raw config dict against the schema, filling defaults in place (as the workflow does)."""
    import jsonschema
    import yaml
    from snakemake.utils import validate

    schema = yaml.safe_load(CONFIG_SCHEMA.read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"config key {key}: {error.message}")
    validate(data, schema=str(CONFIG_SCHEMA), set_default=True)
    return data


def load_config(path: str | Path) -> Config:
    """Read, validate and type a config file (for tests and running scripts by hand)."""
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    return Config.from_dict(validate_config(data))
