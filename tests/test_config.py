"""Config validation: defaults from the schema, wrong types and unknown keys fail with the key's path."""

import copy
from pathlib import Path

import pytest
import yaml

from proganomaly.config import Config, ConfigError, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_validates_and_types():
    cfg = load_config(ROOT / "config" / "config.yaml")
    assert isinstance(cfg, Config)
    assert cfg.tiling.patch_size_px == 64
    assert cfg.records.resolutions(cfg.tiling.patch_size_px) == [4, 8, 16, 32, 64]


def test_empty_config_takes_schema_defaults():
    data = validate_config({})
    cfg = Config.from_dict(data)
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert cfg.seed == schema["properties"]["seed"]["default"]
    assert (
        cfg.tiling.tissue.method
        == schema["properties"]["tiling"]["properties"]["tissue"]["properties"]["method"]["default"]
    )


@pytest.mark.parametrize(
    ("patch", "path", "words"),
    [
        ({"tiling": {"stride_px": "64"}}, "tiling.stride_px", "not of type 'integer'"),
        ({"tiling": {"strid_px": 64}}, "tiling", "'strid_px' was unexpected"),
        ({"tiling": {"tissue": {"method": "magic"}}}, "tiling.tissue.method", "is not one of"),
        ({"seed": -1}, "seed", "less than the minimum"),
        ({"bogus": 1}, "(top level)", "'bogus' was unexpected"),
        ({"records": {"min_size_px": 4.5}}, "records.min_size_px", "not of type 'integer'"),
    ],
)
def test_bad_values_name_the_key(patch, path, words):
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(patch))
    assert f"config key {path}:" in str(err.value)
    assert words in str(err.value)


def test_patch_size_must_be_a_power_of_two_multiple():
    data = validate_config({"tiling": {"patch_size_px": 48}})
    cfg = Config.from_dict(data)
    with pytest.raises(ConfigError, match=r"not records\.min_size_px=4 times a power of two"):
        cfg.records.resolutions(cfg.tiling.patch_size_px)


def test_unvalidated_dict_is_refused():
    with pytest.raises(ConfigError, match="missing key"):
        Config.from_dict({"slides": "x", "seed": 1})
