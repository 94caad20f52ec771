"""Print the workflow's rules as JSON, as Snakemake itself parsed them: name, conda env, threads, resources, config.

Usage (from the repository root): ``python tests/slurm/workflow_rules.py [--configfile FILE]``

The tests run this in a subprocess because parsing a workflow changes the working directory, ``sys.path`` and
Snakemake's global logger. It uses ``WorkflowApi._workflow``, the parsed workflow behind ``snakemake --list-rules``:
Snakemake has no public API that returns a rule's conda env or resources.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.api import SnakemakeApi
from snakemake.io import is_flagged
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings


def _plain(resource) -> int | float | str | None:
    """A resource's value when it is a constant; None when Snakemake computes it per job."""
    if callable(getattr(resource, "_evaluator", None)):
        return None
    value = getattr(resource, "value", resource)
    return value if isinstance(value, int | float | str) else None


def config_keys(params, config: dict) -> list[str]:
    """Dotted paths of the config values a rule passes as params (those named after a top-level config key)."""
    keys: list[str] = []

    def walk(value, path: str) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, f"{path}.{key}")
        else:
            keys.append(path)

    # a detector rule's params are functions of the job's wildcards (detector_params): the same keys for every
    # detector, so the first detector's values say which
    detector = SimpleNamespace(detector=next(iter(config.get("detectors") or {}), "main"))
    for name, value in params.items():
        if name in config:
            walk(value(detector) if callable(value) else value, name)
    return sorted(keys)


def workflow_rules(snakefile: Path, configfiles: list[Path]) -> list[dict]:
    settings = ConfigSettings(configfiles=[p.resolve() for p in configfiles])
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(
            # rules may size threads from workflow.cores, which a parse without --cores leaves undefined
            resource_settings=ResourceSettings(cores=os.cpu_count() or 1),
            config_settings=settings,
            snakefile=snakefile.resolve(),
            workdir=Path.cwd(),
        )._workflow
        rules = []
        for rule in workflow.rules:
            conda = rule.conda_env
            if isinstance(conda, str) and not conda.startswith("/"):
                # relative to the .smk file that declares it, as Snakemake resolves it
                conda = str((Path(rule.snakefile).parent / conda).resolve())
            rules.append(
                {
                    "name": rule.name,
                    "snakefile": str(rule.snakefile),
                    "conda": conda if isinstance(conda, str) else None,
                    "threads": _plain(rule.resources.get("_cores")),
                    "resources": {k: _plain(v) for k, v in rule.resources.items() if not k.startswith("_")},
                    "local": rule.name in workflow._localrules or rule.norun,
                    "runs_code": not rule.norun,  # has shell/script/run/notebook/wrapper
                    "directories": [str(f) for f in rule.output if is_flagged(f, "directory")],
                    "config_keys": config_keys(rule.params, workflow.config),
                }
            )
        return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snakefile", type=Path, default=Path("workflow/Snakefile"))
    parser.add_argument("--configfile", type=Path, action="append", default=[])
    args = parser.parse_args()
    json.dump(workflow_rules(args.snakefile, args.configfile), sys.stdout, indent=1)


if __name__ == "__main__":
    main()
