"""The typed sections of the configuration: one frozen dataclass per mapping of the schema, generated from it.

Each key's type, default and meaning are written once, in ``workflow/schemas/config.schema.yaml``; this module adds
only the class names the library imports and the methods a few sections carry (tests/test_config.py checks the
generated classes against the schema).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path

from proganomaly.config.build import ConfigError, _build, load_schema, validate_config
from proganomaly.config.schema_types import camel_case, sections_from_schema

# Class name per dotted schema path, first match wins. Sections that hold the same keys share a class, so the
# library can take any of them (NoiseConfig for both noises, AdamConfig for every optimiser).
_NAMES = (
    ("", "Config"),
    ("model.*_noise", "NoiseConfig"),
    ("training.optimizers.*", "AdamConfig"),
    ("model.loss_weights", "LossWeights"),
    ("model.loss_weights.*.*", "{parent}{key}Weights"),
    ("model.loss_weights.*", "{key}LossWeights"),
    ("scoring.*", "{key}Scoring"),
    ("*", "{key}Config"),
)


def class_name(path: str) -> str:
    """The class of the mapping at ``path``: model.loss_weights.berg.encoder is BergEncoderWeights."""
    template = next(t for p, t in _NAMES if fnmatch.fnmatchcase(path, p))
    keys = [camel_case(key) for key in ["", *path.split(".")]]
    return template.format(key=keys[-1], parent=keys[-2])


class _Records:
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


class _Model:
    @property
    def architecture_loss_weights(self) -> GanomalyLossWeights | BergLossWeights:
        """The loss-weight groups (generator, encoder, discriminator) of the chosen architecture."""
        return getattr(self.loss_weights, self.architecture)


class _Root:
    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """Build the typed config from a dict that has already been validated (defaults filled)."""
        return _build(cls, data, "config")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


METHODS: dict[str, type] = {"RecordsConfig": _Records, "ModelConfig": _Model, "Config": _Root}
SECTIONS: dict[str, type] = sections_from_schema(load_schema(), class_name, METHODS, __name__)
# published under their names, for `from proganomaly.config import ModelConfig` and for pickling
globals().update(SECTIONS)


def load_config(path: str | Path) -> Config:
    """Read, validate and type a config file (for tests and running scripts by hand)."""
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    return Config.from_dict(validate_config(data))
