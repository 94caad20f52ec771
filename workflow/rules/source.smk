# Where this workflow's own files are on this machine, whether it runs from a clone or as a module from a remote
# source (`snakefile: github(...)` as snakedeploy writes it, or `gitfile(...)`).
#
# Snakemake itself fetches what its directives name: the .smk files, `script:`, `conda:`, report captions. The files
# the workflow reads on its own (the proganomaly package, the schemas, the env files, the detection benchmark's
# summary) are listed in workflow/source-files.txt and fetched here with workflow.source_path, Snakemake's way to a
# source file of a remote workflow. They are laid out under SOURCE_DIR as in the repository, in the folder where
# Snakemake caches the scripts it runs for jobs. A job's script has its cache folder on sys.path (Snakemake's script
# preamble), so `import proganomaly` in a job finds the same package as this parse, in every env and on every Slurm
# node (each job parses the workflow again). docs/deploy.md says more.
import os
import sys
import tempfile
from pathlib import Path

from snakemake.sourcecache import LocalSourceFile


def _listed_files(manifest_text):
    """Repository-relative paths of workflow/source-files.txt (one per line, '#' comments)."""
    lines = (line.split("#", 1)[0].strip() for line in manifest_text.splitlines())
    return [line for line in lines if line]


def _place(cached, target):
    """Put the cached copy of a source file at its repository-relative place (atomically, only when it differs):
    some sources cache under names Python cannot import (a local git source appends '@<tag>' to every file).
    """
    if cached == target:
        return
    data = cached.read_bytes()
    if target.is_file() and target.read_bytes() == data:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, target)


def _source_dir():
    """The repository root for a local workflow; for a remote one, the cached copy of every listed file."""
    basedir = workflow.current_basedir  # workflow/rules, as Snakemake sees it
    if isinstance(basedir, LocalSourceFile):
        return Path(basedir).parent.parent
    manifest = Path(workflow.source_path("../source-files.txt"))
    root = manifest.parent.parent  # the cache mirrors the repository's paths
    for rel in _listed_files(manifest.read_text()):
        _place(Path(workflow.source_path(f"../../{rel}")), root / rel)
    return root


SOURCE_DIR = _source_dir()
sys.path.insert(0, str(SOURCE_DIR / "scripts"))
