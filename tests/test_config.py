"""Config validation: defaults from the schema, wrong types and unknown keys fail with the key's path."""

import copy
import dataclasses
import inspect
import json
import pickle
import re
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from proganomaly.config import (
    Config,
    ConfigError,
    ExportConfig,
    check_cross_keys,
    config_params,
    from_params,
    load_config,
    sections,
    validate_config,
)
from proganomaly.config.schema_types import sections_from_schema

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
        check_cross_keys(cfg)


def test_unvalidated_dict_is_refused():
    with pytest.raises(ConfigError, match="missing key"):
        Config.from_dict({"slides": "x", "seed": 1})


# ------------------------------------------------------------------------------------- one definition per key
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
JSON_TYPES = {
    int: {"integer"}, float: {"number"}, str: {"string"}, bool: {"boolean"}, type(None): {"null"}, dict: {"object"},
}  # fmt: skip


def _json_types(tp) -> set[str]:
    """The JSON schema types a dataclass field type accepts."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return {"object"}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_json_types(a) for a in typing.get_args(tp)))
    if origin in (list, tuple):
        return {"array"}
    return JSON_TYPES[tp]


def _compare(tp, node: dict, where: str) -> list[str]:
    """Differences between a dataclass and its schema mapping: keys, types, defaults and descriptions."""
    hints = typing.get_type_hints(tp)
    props = node["properties"]
    problems = [f"{where}: keys only in the dataclass: {sorted(set(hints) - set(props))}"] * bool(
        set(hints) - set(props)
    )
    problems += [f"{where}: keys only in the schema: {sorted(set(props) - set(hints))}"] * bool(set(props) - set(hints))
    for key in set(hints) & set(props):
        sub, path = props[key], f"{where}.{key}"
        declared = sub["type"] if isinstance(sub["type"], list) else [sub["type"]]
        if set(declared) != _json_types(hints[key]):
            problems.append(f"{path}: schema type {declared}, dataclass {hints[key]}")
        if "default" not in sub:
            problems.append(f"{path}: no default in the schema")
        if dataclasses.is_dataclass(hints[key]):
            problems += _compare(hints[key], sub, path)
        elif not sub.get("description"):
            problems.append(f"{path}: no description in the schema")
    return problems


def test_generated_sections_have_the_schema_keys_types_defaults_and_descriptions():
    assert _compare(Config, SCHEMA, "config") == []


# keys whose type takes more than a scalar lookup: nested and fixed-length arrays, nullables, shared classes
TRICKY = {
    "demo.sha256": str | None,
    "demo.anomaly_kinds": list[str],
    "tiling.target_mpp": float | None,
    "tiling.tissue": sections.TissueConfig,
    "model.filters": list[list[int]],
    "model.unet_skips": list[bool],
    "model.z_noise": sections.NoiseConfig,
    "model.fake_noise": sections.NoiseConfig,
    "model.loss_weights.berg.generator": sections.BergGeneratorWeights,
    "training.optimizers.encoder": sections.AdamConfig,
    "training.optimizers.encoder.clip_norm": float | None,
    "calibration.annotation_classes": list[str] | None,
    "scoring.encoder_features": sections.EncoderFeaturesScoring,
    "evaluation.thresholds": list[float],
    "evaluation.class_color": list[int],
    "evaluation.annotation_mask_downsample": float | None,
}


@pytest.mark.parametrize(("path", "expected"), TRICKY.items(), ids=TRICKY)
def test_generated_types_of_tricky_keys(path, expected):
    tp = Config
    for key in path.split("."):
        tp = typing.get_type_hints(tp)[key]
    assert tp == expected


def test_every_generated_class_is_published_and_exported():
    import proganomaly.config as package

    assert {name: getattr(sections, name) for name in sections.SECTIONS} == sections.SECTIONS
    exported = {name: getattr(package, name) for name in package.__all__}
    assert {n: c for n, c in exported.items() if dataclasses.is_dataclass(c)}.items() <= sections.SECTIONS.items()
    for cls in sections.SECTIONS.values():
        assert cls.__module__ == sections.__name__, cls  # pickling finds the class by module and name
        assert cls.__dataclass_params__.frozen, cls
    cfg = Config.from_dict(validate_config({}))
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_sections_typed_alike_must_agree():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
    schema["properties"]["b"] = {"type": "object", "properties": {"x": {"type": "number"}}}
    with pytest.raises(TypeError, match="b is typed as Same"):
        sections_from_schema(schema, lambda path: "Same" if path else "Root", {}, __name__)


def test_dataclasses_have_no_defaults_of_their_own():
    def fields(tp):
        for f in dataclasses.fields(tp):
            yield tp, f
            hint = typing.get_type_hints(tp)[f.name]
            if dataclasses.is_dataclass(hint):
                yield from fields(hint)

    with_default = [f"{tp.__name__}.{f.name}" for tp, f in fields(Config) if f.default is not dataclasses.MISSING]
    assert with_default == [], "defaults live in the schema only"


def _leaves(data: dict, path: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{path}{key}.")
        else:
            yield f"{path}{key}", value


def test_config_yaml_holds_only_what_the_demo_changes():
    demo = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    defaults = dict(_leaves(validate_config({})))
    restated = [key for key, value in _leaves(demo) if defaults.get(key, object()) == value]
    assert restated == [], "config/config.yaml restates schema defaults"
    text = (ROOT / "config" / "config.yaml").read_text().splitlines()
    for key, _ in _leaves(demo):
        line = next(i for i, t in enumerate(text) if t.strip().startswith(key.split(".")[-1] + ":"))
        assert text[line - 1].strip().startswith("#"), f"{key} in config/config.yaml has no reason above it"


def test_every_key_is_read_somewhere():
    """Leaf names appear in the library, the rule scripts or the rules' parse-time code (loss weights: as terms)."""
    sources = [p for p in (ROOT / "scripts").rglob("*.py") if "config" not in p.relative_to(ROOT / "scripts").parts]
    sources.append(ROOT / "workflow" / "rules" / "common.smk")
    text = "\n".join(p.read_text() for p in sources)
    # the sections' own methods (RecordsConfig.resolutions)
    text += "\n".join(inspect.getsource(cls) for cls in sections.METHODS.values())
    unread = []
    for key, _ in _leaves(validate_config({})):
        name = key.split(".")[-1]
        term = name.removesuffix("_l1").removesuffix("_l2")
        if not re.search(rf"\b({re.escape(name)}|{re.escape(term)})\b", text):
            unread.append(key)
    assert unread == []


# -------------------------------------------------------------------------------------------- cross-key checks
@pytest.mark.parametrize(
    ("patch", "words"),
    [
        ({"tiling": {"patch_size_px": 64, "stride_px": 64}, "calibration": {"border_px": 8}}, "tiling.stride_px=64"),
        ({"tiling": {"patch_size_px": 16, "stride_px": 4}, "calibration": {"border_px": 8}}, "at most"),
        ({"tiling": {"patch_size_px": 48}}, "power of two"),
        ({"tiling": {"patch_size_px": 64}, "model": {"filters": [[8, 8]] * 4}}, "model.filters has 4 entries"),
        ({"tiling": {"patch_size_px": 64}, "training": {"batch_sizes": [4, 4]}}, "training.batch_sizes has 2"),
        ({"model": {"architecture": "berg"}}, "create_encoder"),
        (
            {"calibration": {"batch_size": 9}, "resources": {"gpus": {"calibration": 2}}},
            "calibration.batch_size=9 does not divide by resources.gpus.calibration=2",
        ),
        (
            {"inference": {"batch_size": 32}, "resources": {"gpus": {"inference": 3}}},
            "inference.batch_size=32 does not divide by resources.gpus.inference=3",
        ),
    ],
)
def test_cross_key_checks_name_the_keys(patch, words):
    cfg = Config.from_dict(validate_config(copy.deepcopy(patch)))
    with pytest.raises(ConfigError, match=re.escape(words)):
        check_cross_keys(cfg)


def test_demo_and_test_configs_pass_the_cross_key_checks():
    check_cross_keys(load_config(ROOT / "config" / "config.yaml"))
    data = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(data, yaml.safe_load((ROOT / "tests" / "config" / "config.yaml").read_text()))
    check_cross_keys(Config.from_dict(validate_config(data)))


def test_gpu_counts_that_divide_the_batches_pass():
    raw = {"calibration": {"batch_size": 8}, "inference": {"batch_size": 30}}
    raw["resources"] = {"gpus": {"calibration": 4, "inference": 3}}
    check_cross_keys(Config.from_dict(validate_config(raw)))


def dry_run_with(tmp_path: Path, extra_yaml: str) -> subprocess.CompletedProcess:
    """`snakemake -n` in tmp_path with the demo config and `extra_yaml` merged over it."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    extra = tmp_path / "extra.yaml"
    extra.write_text(extra_yaml)
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "workflow" / "Snakefile")]
    cmd += ["--directory", str(tmp_path), "--configfile", str(extra), "-n", "--cores", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_batch_split_error_stops_the_workflow_at_parse_time(tmp_path):
    """`snakemake -n` fails before any job, with the check's message naming both keys."""
    proc = dry_run_with(tmp_path, "resources:\n  gpus:\n    calibration: 2\ncalibration:\n  batch_size: 7\n")
    assert proc.returncode != 0
    assert "calibration.batch_size=7 does not divide by resources.gpus.calibration=2" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_cross_key_checks_are_not_repeated_in_rule_scripts():
    for script in (ROOT / "scripts").glob("*.py"):
        text = script.read_text()
        assert "leaves no interior" not in text and "must be at most tiling" not in text, script.name


# ------------------------------------------------------------------------------------------ params are config
def test_no_rule_script_reads_the_whole_config():
    readers = [p.name for p in (ROOT / "scripts").rglob("*.py") if "snakemake.config" in p.read_text()]
    assert readers == [], "rule scripts see only their params: from_params(snakemake.params, snakemake.rule)"


def test_config_params_nest_the_chosen_keys_and_copy_them():
    config = validate_config({})
    params = config_params(config, "calibration.border_px", "stitching.kde.method", "seed", "export")
    assert params == {
        "calibration": {"border_px": 0},
        "stitching": {"kde": {"method": "slide"}},
        "seed": config["seed"],
        "export": config["export"],
    }
    params["export"]["jit_compile"] = False
    assert config["export"]["jit_compile"] is True
    with pytest.raises(ConfigError, match=r"calibration\.bogus"):
        config_params(config, "calibration.bogus")


def test_from_params_types_the_slice_and_refuses_other_keys():
    config = validate_config({})
    params = {**config_params(config, "tiling.patch_size_px", "export", "stitching.kde.method"), "mpp": 0.5}
    cfg = from_params(params, "some_rule")
    assert cfg.tiling.patch_size_px == 64
    assert isinstance(cfg.export, ExportConfig)  # a whole section is its dataclass, as the library expects
    assert cfg.stitching.kde.method == "slide"
    with pytest.raises(ConfigError, match=r"rule some_rule reads config key tiling\.stride_px"):
        _ = cfg.tiling.stride_px
    with pytest.raises(ConfigError, match=r"rule some_rule reads config key stitching\.kde\.ceiling"):
        _ = cfg.stitching.kde.ceiling
    with pytest.raises(ConfigError, match=r"rule some_rule reads config key seed\b"):
        _ = cfg.seed
    assert cfg.to_dict() == {k: v for k, v in params.items() if k != "mpp"}
    with pytest.raises(ConfigError, match="expected int"):
        from_params({"tiling": {"patch_size_px": "64"}}, "some_rule")


# ---------------------------------------------------------------------------- scorers checked before training
def test_scorer_enums_equal_the_registry():
    """The schema's names are the registry's (the workflow parses without importing TensorFlow, so it cannot ask the
    registry itself): a new scorer module needs its name in both enums."""
    from proganomaly.config import enum_of
    from proganomaly.scoring import SCORERS

    assert enum_of("calibration.scorer") == sorted(SCORERS)
    assert enum_of("scoring.combined.scorers") == sorted(set(SCORERS) - {"combined"})


@pytest.mark.parametrize(
    ("patch", "path", "words"),
    [
        ({"calibration": {"scorer": "rgb_eror"}}, "calibration.scorer", "'rgb_eror' is not one of ['combined'"),
        ({"scoring": {"combined": {"scorers": ["rgb_error", "combined"]}}}, "scoring.combined.scorers.1", "not one of"),
        ({"scoring": {"combined": {"scorers": ["rgb_error", "rgb_error"]}}}, "scoring.combined.scorers", "non-unique"),
    ],
)
def test_unknown_scorer_names_fail_validation_with_the_valid_names(patch, path, words):
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(patch))
    assert f"config key {path}:" in str(err.value) and words in str(err.value)


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        (
            {"calibration": {"scorer": "inpainting"}, "scoring": {"inpainting": {"block_px": 24}}},
            "scoring.inpainting.block_px=24 does not divide tiling.patch_size_px=64",
        ),
        (
            {"calibration": {"scorer": "inpainting"}, "scoring": {"inpainting": {"block_px": 32, "masks": 5}}},
            "scoring.inpainting.masks=5 exceeds the 4 blocks",
        ),
        (
            {
                "calibration": {"scorer": "combined"},
                "scoring": {
                    "combined": {"scorers": ["rgb_error", "gradient_similarity"]},
                    "gradient_similarity": {"source": "inpainting"},
                    "inpainting": {"block_px": 12},
                },
            },
            "scoring.inpainting.block_px=12 does not divide tiling.patch_size_px=64 (a part of scoring.combined",
        ),
        (
            {"calibration": {"scorer": "encoder_features"}, "scoring": {"encoder_features": {"layers": [1, 5]}}},
            "scoring.encoder_features.layers [1, 5]: a tiling.patch_size_px=64 model has 5 blocks, so depths 0..4",
        ),
        (
            {"calibration": {"scorer": "latent_distance"}, "model": {"create_encoder": False}},
            "calibration.scorer latent_distance needs GANomaly's second encoder E",
        ),
        (
            {"calibration": {"scorer": "combined"}, "scoring": {"combined": {"scorers": ["latent_distance"]}}},
            "latent_distance (a part of scoring.combined.scorers) needs",
        ),
    ],
    ids=["block_px", "masks", "combined_block_px", "encoder_layers", "latent_distance", "combined_latent"],
)
def test_scorer_settings_are_checked_at_parse_time(patch, words):
    cfg = Config.from_dict(validate_config(copy.deepcopy(patch)))
    with pytest.raises(ConfigError, match=re.escape(words)):
        check_cross_keys(cfg)


def test_scorer_settings_that_fit_pass_and_unused_ones_are_not_checked():
    ok = {
        "calibration": {"scorer": "encoder_features"},
        "scoring": {"encoder_features": {"layers": [0, 4]}, "inpainting": {"block_px": 24}},  # inpainting unused
        "model": {"create_encoder": False},  # nor is the latent distance
    }
    check_cross_keys(Config.from_dict(validate_config(ok)))
    # the demo's encoder-less GANomaly with the inpainting scorer: 8 px blocks divide 64, 64 blocks ≥ 4 masks
    check_cross_keys(Config.from_dict(validate_config({"calibration": {"scorer": "inpainting"}})))
    # Berg always has its encoder E
    berg = {"model": {"architecture": "berg", "create_encoder": True}, "calibration": {"scorer": "latent_distance"}}
    check_cross_keys(Config.from_dict(validate_config(berg)))


def test_misspelt_scorer_stops_the_workflow_at_parse_time(tmp_path):
    proc = dry_run_with(tmp_path, "calibration:\n  scorer: rgb_eror\n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key calibration.scorer: 'rgb_eror' is not one of" in out and "'rgb_error'" in out
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- nested values from the command line
def cli(*entries: str) -> dict:
    """What Snakemake makes of `--config ENTRY ...` (its own parser), merged over the demo config as it does."""
    from snakemake.cli import parse_config

    overrides = parse_config(list(entries))
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(config, copy.deepcopy(overrides))
    return config, overrides


def test_command_line_mappings_get_their_schema_types():
    from proganomaly.config import apply_overrides

    config, overrides = cli(
        "calibration={k_std: 3, one_sided: false, normal_quantile: 0.95}",
        "tiling={target_mpp: 2}",
        "evaluation={splits: [test], thresholds: [0.25, 1]}",
        "detector=detectors/a",
    )
    assert overrides["calibration"]["k_std"] == "3"  # Snakemake hands over strings inside a mapping
    cfg = Config.from_dict(validate_config(apply_overrides(config, overrides)))
    assert cfg.calibration.k_std == 3.0 and cfg.calibration.one_sided is False
    assert cfg.calibration.normal_quantile == 0.95 and cfg.tiling.target_mpp == 2.0
    assert cfg.evaluation.splits == ["test"] and cfg.evaluation.thresholds == [0.25, 1.0]
    assert cfg.detector == "detectors/a"
    # the configfile's other keys of the same section are kept, and its typed values left alone
    assert cfg.calibration.border_px == yaml.safe_load((ROOT / "config" / "config.yaml").read_text()).get(
        "calibration", {}
    ).get("border_px", validate_config({})["calibration"]["border_px"])
    assert config_params(config, "calibration.k_std") == {"calibration": {"k_std": 3}}


def test_command_line_strings_stay_strings_where_the_schema_wants_them():
    from proganomaly.config import apply_overrides

    config, overrides = cli("calibration={scorer: rgb_error}", "stain={normalisation: none}", "slides=a.tsv")
    validate_config(apply_overrides(config, overrides))
    assert config["calibration"]["scorer"] == "rgb_error" and config["stain"]["normalisation"] == "none"
    assert config["slides"] == "a.tsv"
    bad, overrides = cli("calibration={k_std: lots}")
    with pytest.raises(ConfigError, match=r"config key calibration\.k_std: 'lots' is not of type 'number'"):
        validate_config(apply_overrides(bad, overrides))


def test_dotted_keys_expand_into_the_nested_config():
    from proganomaly.config import expand_dotted_keys

    config = {"calibration": {"border_px": 2}, "calibration.k_std": 3, "stitching.kde.bandwidth_um": 50.0}
    expand_dotted_keys(config)
    assert config == {"calibration": {"border_px": 2, "k_std": 3}, "stitching": {"kde": {"bandwidth_um": 50.0}}}
    with pytest.raises(ConfigError, match=r"config has no key 'calibration\.k_sdt': calibration has \[.*'k_std'"):
        expand_dotted_keys({"calibration.k_sdt": 3})
    with pytest.raises(ConfigError, match=r"config has no key 'calibrat\.k_std': the top level has"):
        expand_dotted_keys({"calibrat.k_std": 3})


def test_nested_number_from_the_command_line_reaches_the_rule(tmp_path):
    """`--config 'calibration={k_std: 3}'` parses (the schema types the string Snakemake hands over) and is in
    fit_threshold's params (read back by a Snakefile that includes the workflow's); a misspelt key fails naming it."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    wrapper = tmp_path / "Snakefile"
    wrapper.write_text(
        f"include: {str(ROOT / 'workflow' / 'Snakefile')!r}\n\nimport json\nfrom types import SimpleNamespace\n\n"
        # a detector's params are functions of the job's wildcards: the one detector of this config is main
        'calibration = dict(rules.fit_threshold.rule.params.items())["calibration"]\n'
        'print("PARAMS", json.dumps(calibration(SimpleNamespace(detector="main"))))\n'
    )
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(wrapper), "--directory", str(tmp_path)]
    cmd += ["-n", "--cores", "1", "--config"]

    def k_std(*entries):
        proc = subprocess.run([*cmd, *entries], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(s for s in proc.stdout.splitlines() if s.startswith("PARAMS "))
        return json.loads(line.removeprefix("PARAMS "))["k_std"]

    default = k_std("seed=1")
    assert default != 4
    assert k_std("calibration={k_std: 4}") == 4
    assert k_std("calibration={k_std: 2.5}") == 2.5
    bad = subprocess.run([*cmd, "calibration={k_sdt: 3}"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "config key calibration:" in bad.stdout + bad.stderr and "'k_sdt' was unexpected" in bad.stdout + bad.stderr
