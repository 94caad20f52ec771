"""What reruns after a change, asserted from Snakemake's own dry-run job lists.

A scratch copy of the workflow gets placeholder outputs for its default target, recorded as up to date with
`snakemake --touch --forceall` (which writes the same metadata a real run does: params, code, input checksums).
Each case then changes one thing and reads the jobs that `snakemake --dry-run` plans:

- nothing changed, or a slide file touched without changing it: nothing reruns;
- a stage parameter changed: exactly the jobs `--forcerun <rule>` gives (the rule that reads it and everything
  downstream), and nothing upstream;
- a test slide added to the sheet: only that slide's jobs, plus jobs that pool over slides.

The lists at the top grow with the workflow: add a parameter with the rule that must rerun for it.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
import wfrun

pytestmark = pytest.mark.slow

# (config key path, a new value, the first rule that must rerun; everything downstream of it reruns too)
PARAMETER_CHANGES = (
    (("tiling", "min_tissue_fraction"), 0.3, "tile_slide"),
    (("records", "shard_max_examples"), 7, "write_records"),
    (("calibration", "k_std"), 2.5, "fit_threshold"),
    (("stitching", "kde", "bandwidth_um"), 40.0, "stitch_maps"),
    (("evaluation", "dilations"), [1, 2, 4], "evaluate_slide"),
)
# The resolved config is itself a report item, so any config change rewrites it (and the `all` target job).
ALWAYS = (("export_config", {}),)
# What the issue names explicitly: a calibration change leaves training and tiling alone; a grid change reruns only
# the grid (per slide and pooled) and the report.
NEVER_FOR = {
    "fit_threshold": ("tile_slide", "write_records", "train_reconstruction", "fit_error_distribution"),
    "evaluate_slide": (
        "tile_slide",
        "write_records",
        "train_reconstruction",
        "fit_threshold",
        "infer_slide",
        "stitch_maps",
    ),
}
# Rules that must never rerun for a changed stage parameter or an added test slide (the demo data), and rules that
# a test slide must not rerun (it is neither trained nor calibrated on).
UPSTREAM = ("fetch_demo_slide", "make_demo_cohort")
TRAINING_SIDE = ("train_reconstruction", "fit_error_distribution", "fit_threshold", "export_model")
EXTRA = "tests/config/rerun_change.yaml"


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
            path.write_text(f"placeholder {path.name}\n")
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


@pytest.mark.parametrize(("key", "value", "first_rule"), PARAMETER_CHANGES, ids=lambda v: str(v))
def test_parameter_change_reruns_its_rule_and_what_follows(built, key, value, first_rule):
    workdir, rules = built["workdir"], built["rules"]
    if first_rule not in rules:
        pytest.fail(f"{first_rule} is listed in PARAMETER_CHANGES but is not a rule of the workflow")
    change: dict = value
    for part in reversed(key):
        change = {part: change}
    (workdir / EXTRA).write_text(yaml.safe_dump(change))
    try:
        changed = planned(workdir, "--configfile", wfrun.TEST_CONFIG.as_posix(), EXTRA)
    finally:
        (workdir / EXTRA).unlink()
    forced = planned(workdir, "--forcerun", first_rule) + list(ALWAYS)
    ran = sorted(changed, key=repr)
    assert {r for r, _ in ran} >= {first_rule}, f"changing {'.'.join(key)} reran {ran}, not {first_rule}"
    assert not {r for r, _ in ran} & set(NEVER_FOR.get(first_rule, ())), f"{'.'.join(key)} reran {ran}"
    assert ran == sorted(forced, key=repr), (
        f"changing {'.'.join(key)} reran {ran}; {first_rule} and its dependents are {forced}"
    )
    # (the --forcerun comparison already rules out anything upstream, e.g. training for a calibration change)
    assert not {r for r, _ in ran} & set(UPSTREAM), f"changing {'.'.join(key)} rebuilt the demo data: {ran}"


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
