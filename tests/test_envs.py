"""Every rule runs in a conda env from envs/ that pins exactly the versions of requirements.txt, and each env builds.

The rules come from Snakemake's own parse of the workflow (tests/slurm/workflow_rules.py, cross-checked against
`snakemake --list-rules`), so a rule added in any .smk file is covered without editing this test.

No conda channel is reachable where the tests run, so `--sdm conda` itself is not exercised. What can be is (marker
`envs`, deselect with `-m "not envs"`): each env's pip list installs into a fresh virtual environment of the env's
Python, and every module the scripts of that env's rules import, directly or through proganomaly, loads there.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
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
def workdir(tmp_path_factory) -> Path:
    return wfrun.copy_tree(tmp_path_factory.mktemp("envs"))


@pytest.fixture(scope="module")
def rules(workdir) -> dict[str, dict]:
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
    names = [canonical(PIN.match(d.strip())["name"]) for d in pip_sections[0] if PIN.match(d.strip())]
    assert len(names) == len(set(names)), f"{env.name}: a package is listed twice: {sorted(names)}"
    for dep in pip_sections[0]:
        match = PIN.match(dep.strip())
        assert match, f"{env.name}: {dep!r} is not pinned as name==version"
        name = canonical(match["name"])
        assert name in pins, f"{env.name}: {match['name']} is not in requirements.txt"
        assert pins[name] == match["version"], (
            f"{env.name}: {match['name']}=={match['version']}, requirements.txt pins {pins[name]}"
        )


# --- each env builds, and loads what its rules' scripts import ---------------------------------------------------

SCRIPTS = ROOT / "scripts"
PACKAGE = "proganomaly"

# Third-party modules that scripts of an env reach only inside functions its rules never call, with the reason. An
# env's own entry that the env loads, or that none of its scripts reaches any more, fails the test (no stale entries).
NOT_CALLED_IN: dict[str, dict[str, str]] = {
    "*": {
        "jsonschema": "config and slide-sheet validation run at parse time, in Snakemake's own environment",
    },
    "report": {
        "tensorflow": "plot_qc reads the records' JSON manifests (data.records.read_manifest); parsing the "
        "TFRecords themselves needs TensorFlow and runs in the tensorflow env",
    },
}

_RULE_SCRIPTS = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(configfiles=[Path(a).resolve() for a in sys.argv[1:]]),
        snakefile=Path("workflow/Snakefile").resolve(),
        workdir=Path.cwd(),
    )._workflow
    found = {}
    for rule in workflow.rules:
        if isinstance(rule.conda_env, str) and isinstance(rule.script, str):
            base = Path(rule.snakefile).parent
            found[rule.name] = [str((base / rule.conda_env).resolve()), str((base / rule.script).resolve())]
print("\nRULE_SCRIPTS " + json.dumps(found))
"""

# Run in the fresh venv: import each module, report what failed and why.
_IMPORT_EACH = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
failed = {}
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        failed[name] = {"missing": exc.name, "error": str(exc)}
    except Exception as exc:
        failed[name] = {"missing": None, "error": f"{type(exc).__name__}: {exc}"}
print("\nIMPORT_EACH " + json.dumps(failed))
"""


@pytest.fixture(scope="module")
def rule_scripts(workdir) -> dict[str, tuple[Path, Path]]:
    """rule -> (env file, script), both in the repository, as Snakemake resolves them."""
    # Two detectors, so that the fusion stage's rules (included only then) are parsed too
    two = Path(workdir) / "two_detectors.yaml"
    two.write_text("detectors: {fine: {}, coarse: {tiling: {target_mpp: 8.0}}}\n")
    cmd = [wfrun.PYTHON, "-c", _RULE_SCRIPTS, str(wfrun.TEST_CONFIG), str(two)]
    code, out = wfrun.run(cmd, workdir, 300, wfrun.run_env())
    assert code == 0, f"parsing the workflow failed:\n{out[-6000:]}"
    found = json.loads(out.split("\nRULE_SCRIPTS ", 1)[1].splitlines()[0])
    return {
        name: (ROOT / Path(env).relative_to(workdir), ROOT / Path(script).relative_to(workdir))
        for name, (env, script) in found.items()
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def file_imports(path: Path, module: str | None) -> list[tuple[str, bool]]:
    """(absolute module name, eager) of every import in a file: eager when it runs at import (module level, class
    bodies, if/try/with blocks), lazy inside a function. `if TYPE_CHECKING:` bodies never run. Relative imports are
    resolved against `module`, the file's own dotted name (a package's is its __init__'s)."""
    package = module if path.name == "__init__.py" else (module or "").rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def absolute(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        return ".".join([*base, node.module] if node.module else base)

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), eager)
            elif isinstance(child, ast.Import):
                found.extend((alias.name, eager) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = absolute(child)
                found.append((base, eager))
                if base.split(".")[0] == PACKAGE:  # `from proganomaly.x import y`: y may be a module
                    found.extend((f"{base}.{alias.name}", eager) for alias in child.names if alias.name != "*")
            else:
                visit(child, eager)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def package_file(name: str) -> Path | None:
    """The file of a proganomaly module or package, or None when `name` is not one (an attribute, a class)."""
    path = SCRIPTS.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable_imports(scripts: list[Path]) -> tuple[dict[str, bool], dict[str, bool]]:
    """What running these scripts can import, following proganomaly transitively: (proganomaly modules, other
    non-stdlib modules), each mapped to True when it is imported eagerly on the way (so it must load) and False
    when only inside some function."""
    ours: dict[str, bool] = {}
    theirs: dict[str, bool] = {}
    todo: list[tuple[Path, str | None, bool]] = [(s, None, True) for s in scripts]
    while todo:
        path, module, eager_here = todo.pop()
        for name, eager in file_imports(path, module):
            eager = eager and eager_here
            top = name.split(".")[0]
            if top == PACKAGE:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
                    prefix = ".".join(parts[:i])
                    file = package_file(prefix)
                    if file is None or ours.get(prefix, False) or (prefix in ours and not eager):
                        continue
                    ours[prefix] = eager
                    todo.append((file, prefix, eager))
            elif top and top not in sys.stdlib_module_names and top != "snakemake":
                theirs[name] = theirs.get(name, False) or eager
    return ours, theirs


def env_python(spec: dict, env: Path) -> str:
    """An interpreter of the env's Python version (the running one when it matches)."""
    version = next(
        d.split("=", 1)[1].lstrip("=") for d in spec["dependencies"] if isinstance(d, str) and d.startswith("python=")
    )
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable  # `-m venv` from a venv builds on its base interpreter
    found = shutil.which(f"python{version}")
    assert found, f"{env.name} asks for python={version}: install python{version} to test it"
    return found


def pip_pins(spec: dict) -> list[str]:
    return [p for d in spec["dependencies"] if isinstance(d, dict) for p in d.get("pip", [])]


# Extras whose packages no import loads on a machine without their hardware; the install test leaves them out and
# only resolves them (pip --dry-run), so the full pinned list is still checked for conflicts.
RESOLVE_ONLY_EXTRAS = {
    "and-cuda": "TensorFlow's CUDA and cuDNN wheels (~6 GB, more than 10 minutes to install on 2 cores): loaded only "
    "on GPU nodes; without them TensorFlow imports and runs on the CPU",
}


def without_resolve_only_extras(pin: str) -> str:
    """A pin with the RESOLVE_ONLY_EXTRAS dropped from its [extras]."""
    match = re.match(r"^([^\[]+)\[([^\]]*)\](.*)$", pin)
    if not match:
        return pin
    kept = [e.strip() for e in match[2].split(",") if e.strip() not in RESOLVE_ONLY_EXTRAS]
    return f"{match[1]}[{','.join(kept)}]{match[3]}" if kept else f"{match[1]}{match[3]}"


def test_import_walk_finds_eager_and_lazy_imports(tmp_path):
    """The walk that decides what an env must load, on a hand-written file."""
    f = tmp_path / "mod.py"
    f.write_text(
        "import numpy as np\nfrom PIL import Image\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import pandas\nelse:\n    import yaml\n"
        "try:\n    import tifffile\nexcept ImportError:\n    tifffile = None\n"
        "class A:\n    import scipy\n"
        "def f():\n    import tensorflow as tf\n    from .sibling import x\n    from proganomaly.maps import kde\n"
    )
    got = file_imports(f, "pkg.sub.mod")
    assert ("numpy", True) in got and ("PIL", True) in got and not any(n == "PIL.Image" for n, _ in got)
    assert ("yaml", True) in got and ("tifffile", True) in got and ("scipy", True) in got
    assert ("tensorflow", False) in got and ("pkg.sub.sibling", False) in got
    assert ("proganomaly.maps", False) in got and ("proganomaly.maps.kde", False) in got
    assert not any(name == "pandas" for name, _ in got)


def test_resolve_only_extras_are_dropped_from_the_install():
    assert without_resolve_only_extras("tensorflow[and-cuda]==2.21.0") == "tensorflow==2.21.0"
    assert without_resolve_only_extras("pkg[and-cuda,foo]==1") == "pkg[foo]==1"
    assert without_resolve_only_extras("numpy==2.4.6") == "numpy==2.4.6"


@pytest.mark.envs
@pytest.mark.parametrize("env", sorted(ENVS.glob("*.yaml")), ids=lambda p: p.stem)
def test_env_installs_and_loads_what_its_rules_import(env, rule_scripts, tmp_path):
    spec = yaml.safe_load(env.read_text())
    scripts = sorted({script for env_file, script in rule_scripts.values() if env_file == env})
    if not scripts:
        pytest.skip(f"no rule runs a script in {env.name}")
    ours, theirs = reachable_imports(scripts)
    allowed = {**NOT_CALLED_IN["*"], **NOT_CALLED_IN.get(env.stem, {})}
    venv = tmp_path / "venv"
    try:
        start = time.monotonic()
        subprocess.run([env_python(spec, env), "-m", "venv", str(venv)], check=True, timeout=300)
        # --no-compile: byte-compiling every installed file (TensorFlow's thousands) took longer than the install
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"]
        pip.append("--no-compile")
        pins = pip_pins(spec)
        installed = [without_resolve_only_extras(p) for p in pins]
        if installed != pins:
            proc = subprocess.run([*pip, "--dry-run", *pins], capture_output=True, text=True, timeout=1200)
            assert proc.returncode == 0, f"{env.name}: its pip list does not resolve:\n{proc.stderr[-6000:]}"
        proc = subprocess.run([*pip, *installed], capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"{env.name}: pip install of its pip list failed:\n{proc.stderr[-6000:]}"
        installed_s = time.monotonic() - start
        names = sorted(ours) + sorted(theirs)
        env_vars = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env_vars.update(TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run(
            [str(venv / "bin" / "python"), "-c", _IMPORT_EACH, str(SCRIPTS), *names],
            capture_output=True, text=True, timeout=600, env=env_vars, cwd=tmp_path,
        )  # fmt: skip
        assert "\nIMPORT_EACH " in proc.stdout, f"{env.name}: the import check crashed:\n{proc.stderr[-6000:]}"
        failed = json.loads(proc.stdout.split("\nIMPORT_EACH ", 1)[1].splitlines()[0])
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # GBs per env; pytest would keep the last three runs'
    eager = {**ours, **theirs}
    problems = [
        f"{name} ({'at import' if eager[name] else 'inside a function'}): {why['error']}"
        for name, why in failed.items()
        if eager[name] or (why["missing"] or "").split(".")[0] not in allowed
    ]
    assert not problems, (
        f"{env.name} (installed in {installed_s:.0f} s) lacks what the scripts of its rules import "
        f"({', '.join(s.name for s in scripts)}): add the package, pinned as in requirements.txt, to its pip list, "
        f"or list the module in NOT_CALLED_IN with the reason no rule of the env calls it:\n" + "\n".join(problems)
    )
    lazy_missing = {(why["missing"] or "").split(".")[0] for why in failed.values()}
    stale = sorted(set(NOT_CALLED_IN.get(env.stem, {})) - lazy_missing)
    assert not stale, f"NOT_CALLED_IN[{env.stem!r}] lists {stale}, which {env.name} now loads or no script reaches"
