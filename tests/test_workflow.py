"""End-to-end: the whole workflow on the reduced demo config (tests/config/config.yaml) in a scratch directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from proganomaly.data.records import count_examples, make_dataset, verify_manifest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SLIDES = ["demo_train_a", "demo_train_b", "demo_calibrate", "demo_validation", "demo_validation_labc",
          "demo_validation_normal", "demo_test", "demo_test_labd", "demo_test_normal", "demo_test_normal_labd"]  # fmt: skip
TEST_SLIDES = [s for s in SLIDES if s.startswith("demo_test")]

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(ROOT / "tests" / "config" / "config.yaml"), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if check and proc.returncode:
        logs = "\n".join(
            f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "results" / "logs").rglob("*.log"))
        )
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stderr[-6000:]}\n{logs[-12000:]}")
    return proc


def test_rerun_has_nothing_to_do(demo_run):
    proc = snakemake(demo_run, "--cores", "1", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_patch_tables_and_manifests_agree(demo_run):
    res = demo_run / "results"
    for slide in SLIDES:
        patches = pd.read_parquet(res / "detectors" / "main" / "tiles" / f"{slide}.patches.parquet")
        assert len(patches) > 0, slide
        assert list(patches.columns[:6]) == ["slide_id", "x", "y", "width", "height", "tissue_fraction"]
        assert (patches["tissue_fraction"] >= 0.5).all()
        # 16 px at 4 µm/px on a 0.499 µm/px slide: 128 level-0 px per patch, on a grid of 12 px = 96 level-0 px.
        assert set(patches["width"]) == {128} and (patches["x"] % 96 == 0).all() and (patches["y"] % 96 == 0).all()
        manifest = res / "detectors" / "main" / "records" / f"{slide}.manifest.json"
        if slide in TEST_SLIDES:  # test slides get no records: nothing reads them
            assert not manifest.exists()
            continue
        verify_manifest(manifest)
        m = json.loads(manifest.read_text())
        assert sorted(map(int, m["resolutions"])) == [4, 8, 16]
        for size in (4, 8, 16):
            assert count_examples([manifest], size) == len(patches)
        got = sorted(
            (int(e["x"]), int(e["y"])) for e in make_dataset([manifest], 16, with_meta=True).as_numpy_iterator()
        )
        assert got == sorted(zip(patches["x"], patches["y"], strict=True))


def test_every_job_logged_and_benchmarked(demo_run):
    res = demo_run / "results"
    logs = list((res / "logs").rglob("*.log"))
    benches = list((res / "benchmarks").rglob("*.tsv"))
    assert logs and benches
    assert len(benches) == len(logs)
