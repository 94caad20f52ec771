"""Running the workflow from a scratch copy of the repository, for tests that need real runs.

Shared by tests/test_slurm.py and tests/test_reruns.py: copy the parts of the repository a run needs, run snakemake
with a hard time limit that interrupts it the way a user would (SIGINT), and read Snakemake's own job lists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TEST_CONFIG = Path("tests/config/config.yaml")


@dataclass(frozen=True)
class Stage:
    name: str
    rules: tuple[str, ...]  # the stage joins the run once all of these rules exist in the workflow
    targets: tuple[str, ...]  # what to build; {slide} expands over the slide sheet
    compare: tuple[str, ...]  # deterministic outputs that must equal the local run's


# The chain under test, in order. Add a stage here when its rules land; nothing else needs to change.
# PROGANOMALY_LAST_STAGE (default below) ends the chain early: the reduced test config must train in minutes
# before training and what follows can join the default.
STAGES = (
    Stage(
        "tiling",
        ("tile_slide",),
        ("results/detectors/main/tiles/{slide}.patches.parquet",),
        (
            "results/detectors/main/tiles/{slide}.patches.parquet",
            "results/detectors/main/tiles/{slide}.qc.json",
            "results/tiles/{slide}.tissue.png",
        ),
    ),
    Stage(
        "records",
        ("write_records",),
        ("results/detectors/main/records/{slide}.manifest.json",),
        ("results/detectors/main/records/{slide}.manifest.json", "results/detectors/main/records/{slide}"),
    ),
    Stage(
        "training",
        ("train_reconstruction",),
        ("results/detectors/main/model/model.json",),
        ("results/detectors/main/model/model.json", "results/detectors/main/model/generator.weights.h5"),
    ),
    Stage(
        "calibration",
        ("fit_error_distribution", "fit_threshold"),
        ("results/detectors/main/calibration/threshold.json",),
        (
            "results/detectors/main/calibration/error_distribution.json",
            "results/detectors/main/calibration/threshold.json",
        ),
    ),
    Stage("export", ("export_model",), ("results/detectors/main/export/model_card.json",), ()),
    Stage(
        "inference",
        ("infer_slide",),
        ("results/detectors/main/slides/demo_test/patches.parquet",),
        ("results/detectors/main/slides/demo_test/patches.parquet",),
    ),
)


LAST_STAGE = os.environ.get("PROGANOMALY_LAST_STAGE", "inference")


def chain_so_far(rules) -> list[Stage]:
    """The stages whose rules exist, up to the first that is missing (a later stage needs the earlier ones)."""
    assert LAST_STAGE in {s.name for s in STAGES}, f"PROGANOMALY_LAST_STAGE={LAST_STAGE} is not one of {STAGES}"
    stages = []
    for stage in STAGES:
        if not all(r in rules for r in stage.rules):
            break
        stages.append(stage)
        if stage.name == LAST_STAGE:
            break
    assert stages, f"the workflow lacks the first stage's rules {STAGES[0].rules}: {sorted(rules)}"
    return stages


# What a run needs from the repository (relative paths, copied as they are).
TREE = (
    "workflow", "scripts", "config", "envs", "slurm", "profiles", "tests/config",
    "docs/detection-benchmark.json",  # the report's scorer comparison reads it
)  # fmt: skip


def copy_tree(dest: Path) -> Path:
    """A scratch copy of the repository's workflow parts, so runs never touch the shared results/ or .snakemake/."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")
    for rel in TREE:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=ignore)
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def run_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **extra})
    return env


def run(cmd: list[str], cwd: Path, timeout_s: float, env: dict | None = None) -> tuple[int, str]:
    """Run a command; after timeout_s send SIGINT, then raise with the output's tail.

    SIGINT because it is what a user does: snakemake then cancels its Slurm jobs, and the slurm executor ignores
    SIGTERM while it waits on a status command that fails.
    """
    # Own process group: if snakemake does not stop on SIGINT, the group (its local jobs too) can be killed.
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env or run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except BaseException as exc:  # timeout, or Ctrl-C in pytest: stop snakemake cleanly before leaving
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            msg = f"{' '.join(cmd)} still running after {timeout_s:.0f} s (SIGINT sent):\n{out[-8000:]}"
            raise AssertionError(msg) from None
        raise
    return proc.returncode, out


def snakemake(workdir: Path, *args: str, timeout_s: float = 1800, check: bool = True, env=None) -> str:
    """Run snakemake in workdir with the reduced test config; on failure raise with its output and job logs."""
    cmd = [SNAKEMAKE, "--configfile", str(TEST_CONFIG), *args]
    code, out = run(cmd, workdir, timeout_s, env)
    if check and code:
        raise AssertionError(f"{' '.join(cmd)} (in {workdir}) exited with {code}:\n{out[-6000:]}\n{job_logs(workdir)}")
    return out


def job_logs(workdir: Path, limit: int = 12000) -> str:
    """Tails of the rules' logs and of the Slurm job logs, newest last, for failure messages."""
    logs = sorted((workdir / "results" / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
    text = "".join(f"--- {p.relative_to(workdir)}\n{p.read_text(errors='replace')[-2000:]}\n" for p in logs)
    return text[-limit:]


_STATS_ROW = re.compile(r"^(\S+)\s+(\d+)$")


def planned_jobs(workdir: Path, *targets: str, extra: tuple[str, ...] = ()) -> Counter:
    """Jobs per rule that snakemake would run for targets, from its own dry-run "Job stats" table."""
    out = snakemake(workdir, "--dry-run", "--cores", "1", "--quiet", "rules", *extra, "--", *targets, timeout_s=600)
    counts: Counter = Counter()
    lines = out.splitlines()
    if "Nothing to be done" in out and "Job stats:" not in out:
        return counts
    start = lines.index("Job stats:") + 3  # title, header, rule of dashes
    for line in lines[start:]:
        match = _STATS_ROW.match(line.strip())
        if not match or match[1] == "total":
            break
        counts[match[1]] = int(match[2])
    return counts


def workflow_rules(workdir: Path) -> dict[str, dict]:
    """The parsed workflow's rules (conda env, threads, resources, local) by name; see workflow_rules.py."""
    code, out = run(
        [PYTHON, str(Path(__file__).with_name("workflow_rules.py")), "--configfile", str(TEST_CONFIG)],
        workdir,
        300,
        run_env(),
    )
    if code:
        raise AssertionError(f"parsing the workflow failed:\n{out[-6000:]}")
    return {rule["name"]: rule for rule in json.loads(out[out.index("[") :])}
