"""Every rule runs in a conda env from envs/ that pins exactly the versions of requirements.txt.

The rules come from Snakemake's own parse of the workflow (tests/slurm/workflow_rules.py, cross-checked against
`snakemake --list-rules`), so a rule added in any .smk file is covered without editing this test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
import wfrun

ROOT = wfrun.ROOT
ENVS = ROOT / "envs"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]+\])?==(?P<version>[^\s;=]+)$")


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = PIN.match(line)
            assert match, f"requirements.txt: {line!r} is not an exact pin (name==version)"
            pins[canonical(match["name"])] = match["version"]
    return pins


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> dict[str, dict]:
    workdir = wfrun.copy_tree(tmp_path_factory.mktemp("envs"))
    parsed = wfrun.workflow_rules(workdir)
    proc = subprocess.run(
        [wfrun.SNAKEMAKE, "--configfile", str(wfrun.TEST_CONFIG), "--list-rules"],
        cwd=workdir, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    # "name (docstring)"; a long docstring continues on indented lines
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.strip() and not line[0].isspace()]
    assert set(parsed) <= set(listed) | {"all"} and set(listed) <= set(parsed), (sorted(parsed), listed)
    # paths back into the repository, so the checks below read the real envs/
    for rule in parsed.values():
        if rule["conda"]:
            rule["conda"] = str(ROOT / Path(rule["conda"]).relative_to(workdir))
    return parsed


def test_every_rule_that_runs_code_names_an_env_in_envs(rules):
    code_rules = {name: rule for name, rule in rules.items() if rule["runs_code"]}
    assert code_rules, "the workflow has no rules"
    for name, rule in code_rules.items():
        assert rule["conda"], f"rule {name} ({rule['snakefile']}) has no conda: directive"
        env = Path(rule["conda"])
        assert env.parent == ENVS and env.suffix == ".yaml", f"rule {name}: {env} is not an envs/*.yaml file"
        assert env.is_file(), f"rule {name}: conda env {env} does not exist"


@pytest.mark.parametrize("env", sorted(ENVS.glob("*.yaml")), ids=lambda p: p.name)
def test_env_pins_the_versions_of_requirements_txt(env):
    spec = yaml.safe_load(env.read_text())
    assert isinstance(spec, dict) and {"name", "channels", "dependencies"} <= set(spec), f"{env.name}: not a conda env"
    pins = requirements()
    conda_deps = [d for d in spec["dependencies"] if isinstance(d, str)]
    pip_sections = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1 and "pip" in conda_deps, f"{env.name}: expected pip and one pip: section"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    for dep in conda_deps:
        name, _, version = dep.partition("=")
        if name == "python":
            assert version.lstrip("=") == python, f"{env.name}: python={version}, the project venv runs {python}"
        else:
            assert name == "pip", f"{env.name}: conda package {dep!r} is not in requirements.txt; install it with pip"
    for dep in pip_sections[0]:
        match = PIN.match(dep.strip())
        assert match, f"{env.name}: {dep!r} is not pinned as name==version"
        name = canonical(match["name"])
        assert name in pins, f"{env.name}: {match['name']} is not in requirements.txt"
        assert pins[name] == match["version"], (
            f"{env.name}: {match['name']}=={match['version']}, requirements.txt pins {pins[name]}"
        )
