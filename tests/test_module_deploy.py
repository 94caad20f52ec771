"""The workflow deploys as a Snakemake module from a git source, the way snakedeploy sets it up (docs/deploy.md).

A snapshot of this working tree becomes a fresh git repository with its own tag (the real repository's tags are never
read or touched); a separate folder gets config/ copied from it and a Snakefile that declares the module, and
Snakemake plans the demo there and runs a job whose script imports proganomaly from Snakemake's source cache.

`.venv/bin/python tests/test_module_deploy.py` rewrites workflow/source-files.txt from the tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
import wfrun

ROOT = wfrun.ROOT
SOURCE_FILES = ROOT / "workflow" / "source-files.txt"
TAG = "v0.0.0-deploy-test"
REPO = "example-lab/proganomaly"  # any owner/name: the github() test seeds Snakemake's clone of it
# Rules a demo run must plan, from every stage; the full job counts are compared with a run from the clone itself.
EXPECTED_RULES = {
    "fetch_demo_slide", "make_demo_cohort", "tile_slide", "write_records", "train_reconstruction",
    "fit_error_distribution", "fit_threshold", "export_model", "infer_slide", "stitch_maps", "evaluate_slide",
}  # fmt: skip
# Snakemake 9.27 fails planning a job of a gitfile() module while checking whether its script changed
# (LocalGitFile.join is handed a LocalSourceFile); github() sources are not affected. Leaving the `code` trigger out
# sidesteps it: docs/deploy.md says so.
GITFILE_TRIGGERS = ("--rerun-triggers", "mtime", "params", "input", "software-env")


def expected_source_files(root: Path = ROOT) -> list[str]:
    """What workflow/source-files.txt must list: every file the workflow reads that no Snakemake directive names."""
    files = [p for p in (root / "scripts" / "proganomaly").rglob("*.py") if "__pycache__" not in p.parts]
    files += [*(root / "workflow" / "schemas").glob("*.yaml"), *(root / "envs").glob("*.yaml")]
    files.append(root / "docs" / "detection-benchmark.json")
    return sorted(p.relative_to(root).as_posix() for p in files)


def listed_source_files() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in SOURCE_FILES.read_text().splitlines())
    return [line for line in lines if line]


def write_source_files() -> None:
    header = [line for line in SOURCE_FILES.read_text().splitlines() if line.startswith("#")]
    SOURCE_FILES.write_text("\n".join([*header, *expected_source_files()]) + "\n")


def git(*args: str, cwd: Path) -> str:
    ident = ("-c", "user.name=proganomaly tests", "-c", "user.email=tests@proganomaly.invalid")
    return subprocess.run(["git", *ident, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def snapshot_repository(dest: Path) -> Path:
    """The working tree as git would commit it (tracked and untracked, not ignored), as a new repository tagged TAG."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the work tree is not part of the snapshot
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git("init", "-q", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "snapshot for the deployment test", cwd=dest)
    git("tag", "-a", TAG, "-m", "deployment test", cwd=dest)
    return dest


def deploy(dest: Path, repo: Path, source: str) -> Path:
    """What `snakedeploy deploy-workflow` writes: config/ from the tagged repository and a Snakefile using it."""
    shutil.copytree(repo / "config", dest / "config")
    (dest / "workflow").mkdir(parents=True)
    (dest / "workflow" / "Snakefile").write_text(
        'configfile: "config/config.yaml"\n\n\n'
        f"module proganomaly:\n    snakefile:\n        {source}\n    config:\n        config\n\n\n"
        "use rule * from proganomaly\n"
    )
    return dest


def snakemake(workdir: Path, cache: Path, *args: str) -> str:
    # Snakemake's source cache (and its clones of github() repositories) under the test's own folder
    env = wfrun.run_env(XDG_CACHE_HOME=str(cache))
    code, out = wfrun.run([wfrun.SNAKEMAKE, *args], workdir, 600, env)
    assert code == 0, f"snakemake {' '.join(args)} in {workdir} exited with {code}:\n{out[-8000:]}"
    return out


_STATS_ROW = re.compile(r"^(\S+)\s+(\d+)$")


def planned(out: str) -> Counter:
    """Jobs per rule from a dry run's "Job stats" table."""
    lines = out.splitlines()
    counts: Counter = Counter()
    for line in lines[lines.index("Job stats:") + 3 :]:
        match = _STATS_ROW.match(line.strip())
        if not match or match[1] == "total":
            break
        counts[match[1]] = int(match[2])
    return counts


DRY_RUN = ("--dry-run", "--cores", "1", "--quiet", "rules")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return snapshot_repository(tmp_path_factory.mktemp("proganomaly"))


@pytest.fixture(scope="module")
def clone_plan(repo, tmp_path_factory) -> Counter:
    """The demo's jobs as a clone plans them (config/config.yaml, the demo slide sheet)."""
    workdir = tmp_path_factory.mktemp("clone")
    shutil.copytree(repo, workdir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    return planned(snakemake(workdir, tmp_path_factory.mktemp("cache"), *DRY_RUN))


def test_source_files_lists_what_a_deployed_copy_reads():
    listed, expected = listed_source_files(), expected_source_files()
    missing, extra = sorted(set(expected) - set(listed)), sorted(set(listed) - set(expected))
    assert not missing and not extra, (
        f"workflow/source-files.txt is out of date (missing {missing}, no longer there {extra}): a module deployment "
        "would lack them. Rewrite it with `.venv/bin/python tests/test_module_deploy.py`."
    )


def test_release_version_is_the_package_version_and_in_the_changelog():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    init = (ROOT / "scripts" / "proganomaly" / "__init__.py").read_text()
    assert f'__version__ = "{version}"' in init, f"scripts/proganomaly/__init__.py's __version__ is not {version}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M), (
        f"CHANGELOG.md has no '## [{version}] - YYYY-MM-DD' entry for pyproject.toml's version"
    )


def test_gitfile_module_plans_the_demo_and_runs_a_job(repo, clone_plan, tmp_path):
    source = f'gitfile(repo_path="{repo}", path="workflow/Snakefile", tag="{TAG}")'
    workdir = deploy(tmp_path / "deployed", repo, source)
    cache = tmp_path / "cache"
    plan = planned(snakemake(workdir, cache, *DRY_RUN, *GITFILE_TRIGGERS))
    assert EXPECTED_RULES <= set(plan), sorted(EXPECTED_RULES - set(plan))
    assert plan == clone_plan
    # a real job: its script imports proganomaly (and reads the schemas) from Snakemake's source cache
    snakemake(workdir, cache, "--cores", "1", *GITFILE_TRIGGERS, "--", "results/report/software/config.yaml")
    assert "calibration:" in (workdir / "results" / "report" / "software" / "config.yaml").read_text()


def test_github_module_as_snakedeploy_writes_it(repo, clone_plan, tmp_path):
    """`github(...)`, snakedeploy's form, offline: Snakemake reads GitHub sources from its own bare clone of the
    repository, which the test puts where Snakemake keeps it (so Snakemake finds the tag and never fetches)."""
    cache = tmp_path / "cache"
    clone = cache / "snakemake" / "snakemake" / "source-cache" / "snakemake-git-cache" / "github.com" / REPO
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(clone)], check=True, capture_output=True)
    source = f'github("{REPO}", path="workflow/Snakefile", tag="{TAG}")'
    workdir = deploy(tmp_path / "deployed", repo, source)
    plan = planned(snakemake(workdir, cache, *DRY_RUN))
    assert plan == clone_plan
    snakemake(workdir, cache, "--cores", "1", "--", "results/report/software/environments.tsv")
    assert "tensorflow" in (workdir / "results" / "report" / "software" / "environments.tsv").read_text()


if __name__ == "__main__":
    write_source_files()
    print(f"wrote {SOURCE_FILES.relative_to(ROOT)}: {len(expected_source_files())} files")
