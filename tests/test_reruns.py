"""What reruns after a change, asserted from Snakemake's own dry-run job lists.

A scratch copy of the workflow gets placeholder outputs for its default target, recorded as up to date with
`snakemake --touch --forceall` (which writes the same metadata a real run does: params, code, input checksums).
Each case then changes one thing and reads the jobs that `snakemake --dry-run` plans:

- nothing changed, or a slide file touched without changing it: nothing reruns;
- a config key changed: exactly the jobs `--forcerun` gives for the rules whose params hold that key (read from the
  parsed workflow, tests/slurm/workflow_rules.py) and everything downstream of them, and nothing upstream. Every
  leaf key of the schema is tried with a new valid value chosen from its schema; keys with the same readers are
  changed together in one dry run, to keep the test fast;
- a test slide added to the sheet: only that slide's jobs, plus jobs that pool over slides.
"""

from __future__ import annotations

import copy
import re
import shutil
import sys
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml
from snakemake.utils import update_config

from proganomaly.config import Config, ConfigError, check_cross_keys, validate_config

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
import wfrun

pytestmark = pytest.mark.slow

SCHEMA = yaml.safe_load((wfrun.ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
# Sections whose every key must be tried; every other section needs at least one.
EVERY_KEY = ("calibration", "stitching", "evaluation")
# Rules that must never rerun for a changed stage parameter or an added test slide (the demo data), and rules that
# a test slide must not rerun (it is neither trained nor calibrated on).
UPSTREAM = ("fetch_demo_slide", "make_demo_cohort")
TRAINING_SIDE = ("train_reconstruction", "fit_error_distribution", "fit_threshold", "export_model")
EXTRA = "tests/config/rerun_change.yaml"
# Placeholder contents that parse-time checks accept (the sheet check reads the annotation GeoJSONs).
PLACEHOLDER = {".geojson": '{"type": "FeatureCollection", "features": []}\n', ".json": "{}\n"}
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
# The slide sheet is an input file, not a parameter: test_adding_a_test_slide_runs_only_its_branch covers it.
# detectors names the detectors, so changing it changes the jobs (tests/test_detectors.py), not their parameters.
NOT_PARAMETERS = ("slides", "detector", "detectors")


def planned(workdir: Path, *args: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run of the default target plans."""
    out = wfrun.snakemake(workdir, "--dry-run", "--cores", "1", *args, timeout_s=600)
    jobs, rule = [], None
    for line in out.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            if rule:
                jobs.append((rule, {}))
            rule = match[1]
        elif rule and (match := re.match(r"^wildcards: (.*)$", line.strip())):
            jobs.append((rule, dict(kv.split("=", 1) for kv in match[1].split(", "))))
            rule = None
        elif rule and not line.strip():
            jobs.append((rule, {}))
            rule = None
    return jobs


def pattern_regex(pattern: str) -> re.Pattern:
    """Regex of a Snakemake output pattern such as results/records/{slide,a|b} or results/{x}/maps."""
    parts, pos = [], 0
    for match in re.finditer(r"\{(\w+)(?:,([^{}]*(?:\{[^{}]*\}[^{}]*)*))?\}", pattern):
        parts.append(re.escape(pattern[pos : match.start()]))
        parts.append(f"(?:{match[2]})" if match[2] else "[^/]+")
        pos = match.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("".join(parts))


def make_placeholders(workdir: Path, rules: dict[str, dict]) -> None:
    """Every output of the default target as an empty file (or directory), then recorded as up to date."""
    out = wfrun.snakemake(workdir, "--cores", "1", "--detailed-summary", timeout_s=600)
    lines = out[out.index("output_file\t") :].splitlines()[1:]
    directories = [pattern_regex(p) for r in rules.values() for p in r["directories"]]
    for line in lines:
        if "\t" not in line:
            continue
        path = workdir / line.split("\t", 1)[0]
        if any(d.fullmatch(line.split("\t", 1)[0]) for d in directories):
            path.mkdir(parents=True, exist_ok=True)
            (path / "placeholder").write_text("x")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(PLACEHOLDER.get(path.suffix, f"placeholder {path.name}\n"))
    wfrun.snakemake(workdir, "--cores", "1", "--touch", "--forceall", timeout_s=600)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    workdir = wfrun.copy_tree(tmp_path_factory.mktemp("reruns"))
    rules = wfrun.workflow_rules(workdir)
    make_placeholders(workdir, rules)
    assert planned(workdir) == [], "placeholders recorded with --touch must leave nothing to do"
    return {"workdir": workdir, "rules": rules}


def test_touching_a_slide_without_change_reruns_nothing(built):
    workdir = built["workdir"]
    sheet = pd.read_csv(workdir / "config" / "slides.tsv", sep="\t", dtype=str)
    slide = workdir / sheet["path"].iloc[-1]
    before = slide.stat().st_mtime
    slide.touch()
    assert slide.stat().st_mtime > before
    assert planned(workdir) == []


def schema_leaves(node: dict = SCHEMA, path: str = "") -> dict[str, dict]:
    """Every leaf key of the schema (dotted path) with its sub-schema."""
    if node.get("type") == "object" and "properties" in node:
        out = {}
        for key, sub in node["properties"].items():
            out.update(schema_leaves(sub, f"{path}.{key}" if path else key))
        return out
    return {path: node}


def get(config: dict, path: str):
    for key in path.split("."):
        config = config[key]
    return config


def nested(path: str, value) -> dict:
    for key in reversed(path.split(".")):
        value = {key: value}
    return value


def candidates(schema: dict, value) -> list:
    """New values to try for a key, valid or not: the schema and the cross-key checks pick among them."""
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if value is None:
        return [v for t, v in (("number", 1.0), ("array", ["changed"])) if t in types]
    if isinstance(value, bool):
        out = [not value]
    elif "enum" in schema:
        out = [e for e in schema["enum"] if e != value]
    elif isinstance(value, str):
        out = [value + "_changed"]
    elif isinstance(value, int):
        out = [value + 1, value - 1, value * 2, value // 2]
    elif isinstance(value, float):
        out = [value * 0.5, value * 2, value + 1.0] if value else [0.5, 1.0]
    else:
        spare = [e for e in schema.get("items", {}).get("enum", []) if e not in value]
        out = [value[::-1], value[:-1], value + spare[:1], value + value[-1:]]
    return out + ([None] if "null" in types else [])


def is_valid(config: dict) -> bool:
    """The config (defaults already filled) passes the schema and the cross-key checks."""
    if not VALIDATOR.is_valid(config):
        return False
    try:
        check_cross_keys(Config.from_dict(config))
    except ConfigError:
        return False
    return True


def base_config(workdir: Path) -> dict:
    config: dict = {}
    for rel in ("config/config.yaml", wfrun.TEST_CONFIG):
        update_config(config, yaml.safe_load((workdir / rel).read_text()) or {})
    return validate_config(config)


def batches(base: dict, readers: dict[str, frozenset]) -> list[tuple[frozenset, dict[str, object]]]:
    """Keys with the same readers, each with a new value, grouped so that every group's config stays valid.

    Two passes, so that a key valid only together with another (model.architecture berg needs create_encoder)
    finds it already changed in its group.
    """
    out: list[tuple[frozenset, dict]] = []
    placed: set[str] = set()
    for _ in range(2):
        for key, sub in schema_leaves().items():
            if key in placed or key in NOT_PARAMETERS:
                continue
            group = readers[key]
            for batch_readers, changes in out:
                if batch_readers == group and _try(base, changes, key, sub):
                    break
            else:
                changes = {}
                if not _try(base, changes, key, sub):
                    continue
                out.append((group, changes))
            placed.add(key)
    return out


def _try(base: dict, changes: dict, key: str, sub: dict) -> bool:
    """Add key with its first new value that keeps base + changes valid; False when none does."""
    for value in candidates(sub, get(base, key)):
        config = copy.deepcopy(base)
        for path, new in {**changes, key: value}.items():
            update_config(config, nested(path, new))
        if value != get(base, key) and is_valid(config):
            changes[key] = value
            return True
    return False


def test_each_config_key_reruns_exactly_its_readers_and_what_follows(built):
    workdir, rules = built["workdir"], built["rules"]
    leaves = schema_leaves()
    readers = {key: frozenset(name for name, r in rules.items() if key in r["config_keys"]) for key in leaves}
    forced: dict[frozenset, list] = {}
    tried, failures = set(), []
    for group, changes in batches(base_config(workdir), readers):
        change: dict = {}
        for path, value in changes.items():
            update_config(change, nested(path, value))
        (workdir / EXTRA).write_text(yaml.safe_dump(change))
        try:
            ran = sorted(planned(workdir, "--configfile", wfrun.TEST_CONFIG.as_posix(), EXTRA), key=repr)
        finally:
            (workdir / EXTRA).unlink()
        if group not in forced:
            forced[group] = sorted(planned(workdir, "--forcerun", *sorted(group)), key=repr)
        if ran != forced[group]:
            failures.append(
                f"changing {sorted(changes)} reran {ran}; their readers {sorted(group)} give {forced[group]}"
            )
        tried |= set(changes)
    assert not failures, "\n".join(failures)
    untried = sorted(k for k in leaves if k not in tried and k.split(".")[0] in EVERY_KEY)
    assert not untried, f"no valid new value found for {untried}"
    sections = {k.split(".")[0] for k in leaves} - set(NOT_PARAMETERS)
    assert sections == {k.split(".")[0] for k in tried}, (
        f"sections never changed: {sections - {k.split('.')[0] for k in tried}}"
    )


def test_issue_cases_are_read_where_used(built):
    """The rules that must (and must not) see a key, as the issue found them."""
    rules = built["rules"]

    def readers(key):
        return {name for name, r in rules.items() if key in r["config_keys"]} - {"export_config"}

    # export_model records it in the model card, which screening checks against the config.
    assert readers("calibration.border_px") == {
        "fit_error_distribution",
        "fit_threshold",
        "infer_slide",
        "export_model",
    }
    assert readers("demo.mpp") == {"fetch_demo_slide"}
    assert not readers("calibration.k_std") & {"fit_error_distribution", "train_reconstruction", "tile_slide"}
    assert readers("evaluation.dilations") == {"evaluate_slide"}


def test_adding_a_test_slide_runs_only_its_branch(built):
    workdir = built["workdir"]
    sheet_path = workdir / "config" / "slides.tsv"
    original = sheet_path.read_text()
    sheet = pd.read_csv(sheet_path, sep="\t", dtype=str, keep_default_na=False)
    source = sheet[sheet["split"] == "test"].iloc[0]
    new = workdir / "data" / "extra_test.tif"
    new.parent.mkdir()
    shutil.copy2(workdir / source["path"], new)
    row = {**source.to_dict(), "slide_id": "extra_test", "path": "data/extra_test.tif", "annotations": ""}
    pd.concat([sheet, pd.DataFrame([row])]).to_csv(sheet_path, sep="\t", index=False)
    try:
        jobs = planned(workdir)
    finally:
        sheet_path.write_text(original)
    slides = {w.get("slide") for _, w in jobs}
    assert ("tile_slide", {"slide": "extra_test"}) in jobs, jobs
    assert slides <= {"extra_test", None}, f"other slides rerun: {jobs}"
    assert not {r for r, _ in jobs} & set(UPSTREAM + TRAINING_SIDE), f"a test slide retrained or rebuilt: {jobs}"
