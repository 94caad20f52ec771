"""Software and configuration: the resolved config as YAML and each conda env's pins against what is importable.

Runs here are without conda, so the report states both what each env pins (`envs/*.yaml`) and which version this
Python actually imports (`importlib.metadata`); a mismatch is listed, not hidden.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml

_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*(==|=|>=|<=|~=)?\s*([^\s#;]*)")


def parse_env(text: str) -> list[dict]:
    """(source, package, pinned) rows of a conda env file: conda dependencies and its pip list."""
    env = yaml.safe_load(text) or {}
    rows = []
    for dep in env.get("dependencies", []) or []:
        if isinstance(dep, dict):
            for spec in dep.get("pip", []) or []:
                m = _PIN.match(str(spec))
                if m:
                    rows.append({"source": "pip", "package": m.group(1), "pinned": m.group(3) or None})
        else:
            m = _PIN.match(str(dep))
            if m and m.group(1) != "pip":
                rows.append({"source": "conda", "package": m.group(1), "pinned": m.group(3) or None})
    return rows


def installed_version(package: str) -> str | None:
    name = re.sub(r"\[.*\]$", "", package)
    if name == "python":
        import platform

        return platform.python_version()
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environments_table(env_files: list[str | Path]) -> pd.DataFrame:
    """One row per (env, package): pinned and installed versions and whether they agree."""
    rows = []
    for path in env_files:
        path = Path(path)
        for row in parse_env(path.read_text()):
            installed = installed_version(row["package"])
            pinned = row["pinned"]
            if pinned is None:
                status = "unpinned"
            elif installed is None:
                status = "not installed here"
            elif installed == pinned or (row["package"] == "python" and installed.startswith(pinned + ".")):
                status = "match"
            else:
                status = "differs"
            rows.append({"env": path.stem, **row, "installed": installed, "status": status})
    return pd.DataFrame(rows, columns=["env", "source", "package", "pinned", "installed", "status"])


def config_yaml(config: dict, header: str = "") -> str:
    """The validated config (defaults filled) as YAML, keys in their configured order."""
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, allow_unicode=True, width=120)
    return (header + "\n" if header else "") + text
