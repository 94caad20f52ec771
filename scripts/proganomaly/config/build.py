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
    from snakemake.utils import validate

    error = schema_error(data)
    if error is not None:
        raise ConfigError(f"config key {error[0]}: {error[1]}")
    validate(data, schema=str(CONFIG_SCHEMA), set_default=True)
    return data


def schema_error(data: dict) -> tuple[str, str] | None:
    """The most relevant schema violation of a raw config, as (dotted key, message), or None."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(load_schema()).iter_errors(data))
    if error is None:
        return None
    return ".".join(str(p) for p in error.absolute_path) or "(top level)", error.message


# ------------------------------------------------------------------------------------- command-line overrides
def schema_node(path: str) -> dict:
    """The schema node of a dotted config path; ConfigError naming the path (and the keys there) if it has none."""
    node, done = load_schema(), []
    for key in path.split("."):
        props = _properties(node)
        if key not in props:
            where = ".".join(done) or "the top level"
            raise ConfigError(f"config has no key {path!r}: {where} has {sorted(props)}")
        node = props[key]
        done.append(key)
    return node


def _properties(node: dict) -> dict:
    """Keys of an object node (the union over its oneOf/anyOf branches)."""
    props = dict(node.get("properties", {}))
    for branch in node.get("oneOf", node.get("anyOf", [])):
        props.update(branch.get("properties", {}))
    return props


def _types(node: dict) -> set[str]:
    declared = node.get("type", [])
    out = set(declared if isinstance(declared, list) else [declared])
    for branch in node.get("oneOf", node.get("anyOf", [])):
        out |= _types(branch)
    return out


def expand_dotted_keys(config: dict) -> dict:
    """Top-level keys like "calibration.k_std" (from Snakemake's API or a module's `config:`) moved into the nested
    config, in place; an unknown path raises ConfigError naming it. Snakemake's own `--config` refuses dots in keys:
    on the command line nested values are given as YAML mappings (`--config 'calibration={k_std: 3}'`)."""
    for key in [k for k in config if isinstance(k, str) and "." in k]:
        schema_node(key)
        *parents, leaf = key.split(".")
        target = config
        for i, part in enumerate(parents):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"config key {'.'.join(parents[: i + 1])} is not a mapping, so {key} cannot be set")
        target[leaf] = config.pop(key)
    return config


def typed_value(value: Any, node: dict) -> Any:
    """A command-line value with the type the schema asks for: Snakemake reads `--config` values inside a YAML
    mapping as strings ('3', 'true'), so a string where the schema admits no string (or not this one) is read as
    YAML (3 → int, 3.5 → float, true → bool, null → None, [1, 2] → list); mappings and lists are typed item by item."""
    if isinstance(value, dict):
        props = _properties(node)
        return {k: typed_value(v, props[k]) if k in props else v for k, v in value.items()}
    if isinstance(value, list):
        items = node.get("items", {})
        return [typed_value(v, items) for v in value]
    if not isinstance(value, str):
        return value
    types_ = _types(node)
    if "string" in types_ and ("enum" not in node or value in node["enum"]):
        return value
    if not types_ - {"string"}:
        return value
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return typed_value(parsed, node) if isinstance(parsed, dict | list) else parsed


def apply_overrides(config: dict, overrides: dict | None) -> dict:
    """Retype, in place, the config values that came from the command line (`overrides`: Snakemake's parsed
    `--config`, already merged into `config`), by the schema; dotted keys are expanded first. Returns config."""
    expand_dotted_keys(config)
    for key, value in (overrides or {}).items():
        if "." in str(key) or key not in config:
            continue
        props = _properties(load_schema())
        if key == "detectors" and isinstance(value, dict) and isinstance(config[key], dict):
            # an entry's sections are typed as the top-level sections they override
            for name, entry in value.items():
                if isinstance(entry, dict) and isinstance(config[key].get(name), dict):
                    config[key][name] = _merge_typed(config[key][name], entry, {"properties": props})
        elif key in props:
            config[key] = _merge_typed(config[key], value, props[key])
    return config


def _merge_typed(current: Any, given: Any, node: dict) -> Any:
    """`current` with the leaves that `given` set replaced by their typed values (configfile leaves untouched)."""
    if isinstance(given, dict) and isinstance(current, dict):
        props = _properties(node)
        out = dict(current)
        for k, v in given.items():
            if k in out:
                out[k] = _merge_typed(out[k], v, props.get(k, {}))
        return out
    return typed_value(current, node) if current == given else current


def enum_of(path: str) -> list:
    """The allowed values of a dotted config path (its schema enum, or its items' enum for a list)."""
    node = schema_node(path)
    return list(node.get("enum") or node.get("items", {}).get("enum") or [])
