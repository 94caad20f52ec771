"""Typing and validating raw config dicts: the schema fills defaults, the dataclasses generated from it give the types.

Defaults live in ``workflow/schemas/config.schema.yaml`` only: the dataclasses have no defaults, so a config that
skipped validation fails loudly here instead of running with a second, divergent set of defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "workflow" / "schemas"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
SLIDES_SCHEMA = SCHEMA_DIR / "slides.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names its path."""


@functools.cache
def load_schema() -> dict:
    """The config schema, parsed once per process: the typed sections are generated from it at import. Read-only."""
    import yaml

    return yaml.load(CONFIG_SCHEMA.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _build(tp: Any, value: Any, where: str) -> Any:
    """``value`` as type ``tp`` (dataclasses built recursively); every mismatch names its dotted path."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where)
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


def _build_dataclass(tp: Any, value: Any, where: str) -> Any:
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


def validate_config(data: dict) -> dict:
    """Validate a raw config dict against the schema, filling defaults in place (as the workflow does)."""
    import jsonschema
    from snakemake.utils import validate

    schema = load_schema()
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"config key {key}: {error.message}")
    validate(data, schema=str(CONFIG_SCHEMA), set_default=True)
    return data
