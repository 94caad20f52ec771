"""A rule's config is its params: the workflow hands each rule exactly the keys it uses, the script types only those.

Rule side (common.smk): ``params: **config_params(config, "calibration.border_px", "export")`` gives one param per
top-level key, holding the chosen keys (or the whole section) with their nesting: Snakemake reruns a job exactly
when one of those values changes. Script side: ``cfg = from_params(snakemake.params, snakemake.rule)`` types them
with the section dataclasses; reading a key the rule was not given raises ConfigError naming the key and the rule,
so a missing entry in the rule's list cannot go unnoticed.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from proganomaly.config.build import ConfigError, _build
from proganomaly.config.sections import Config

_MISSING = object()


def config_params(config: Mapping, *paths: str) -> dict[str, Any]:
    """{top-level key: the values at the dotted paths below it, nested as in the config}."""
    out: dict[str, Any] = {}
    for path in paths:
        *parents, leaf = path.split(".")
        source, target = config, out
        for key in parents:
            if key not in source:
                raise ConfigError(f"config has no key {path!r}")
            source, target = source[key], target.setdefault(key, {})
        if leaf not in source:
            raise ConfigError(f"config has no key {path!r}")
        target[leaf] = copy.deepcopy(source[leaf])
    return out


class Section:
    """The keys of one config mapping that a rule was given, typed; any other key of the mapping raises ConfigError."""

    def __init__(self, tp: type, data: Mapping, where: str, rule: str):
        hints = typing.get_type_hints(tp)
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise ConfigError(f"rule {rule}: {where or 'the config'} has no key(s) {unknown}")
        self._where, self._rule, self._fields = where, rule, set(hints)
        self._raw = dict(data)
        self._values = {k: _typed(hints[k], v, _join(where, k), rule) for k, v in data.items()}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = self._values.get(name, _MISSING)
        if value is not _MISSING:
            return value
        if name in self._fields:
            raise ConfigError(
                f"rule {self._rule} reads config key {_join(self._where, name)} but does not list it in its params "
                "(add it to the rule's config_params(...) in workflow/rules/)"
            )
        raise AttributeError(f"{self._where or 'the config'} has no key {name!r}")

    def to_dict(self) -> dict:
        return self._raw

    def __repr__(self) -> str:
        return f"Section({self._where}: {sorted(self._values)})"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _typed(tp: Any, value: Any, where: str, rule: str) -> Any:
    """A complete mapping becomes its dataclass (what the library expects); a partial one a Section."""
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping) and not _complete(tp, value):
        return Section(tp, value, where, rule)
    return _build(tp, _plain(value), where)


def _complete(tp: Any, value: Mapping) -> bool:
    hints = typing.get_type_hints(tp)
    if set(value) != set(hints):
        return False
    return all(
        _complete(hints[k], v)
        for k, v in value.items()
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, Mapping)
    )


def _plain(value: Any) -> Any:
    """Plain dicts and lists (Snakemake may hand over its own mapping types)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_params(params: Any, rule: str) -> Section:
    """The typed config slice of a rule's params (params named after top-level config keys; others are ignored)."""
    items: Iterable = params.items() if hasattr(params, "items") else vars(params).items()
    data = {name: _plain(value) for name, value in items if name in Config.__dataclass_fields__}
    return Section(Config, data, "", rule)
