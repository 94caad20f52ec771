"""End-to-end: two detectors (16 px at 4 and at 8 µm/px) on five demo slides, fused into the maps evaluation reads.

The reduced test config, a five-slide sheet (train, calibrate, an annotated and a normal-only validation slide, a
test slide) and `detectors: {fine, coarse}`; checks that the fused maps are what fusion.py defines, computed again here
from the detectors' own maps with scipy's combine_pvalues, and that everything downstream read them.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from proganomaly.maps.fused import read_level0
from proganomaly.maps.fusion import histogram_of, tail_probability
from test_workflow import snakemake as run_snakemake

ROOT = Path(__file__).resolve().parents[1]
SHEET = {
    "demo_train_a": "train",
    "demo_calibrate": "calibrate",
    "demo_validation": "validation",
    "demo_validation_normal": "validation",
    "demo_test": "test",
}
DETECTORS = {"fine": {}, "coarse": {"tiling": {"target_mpp": 8.0, "stride_px": 8}}}

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str):
    """test_workflow's runner, with two.yaml merged after the test config (the paths extend its --configfile)."""
    return run_snakemake(workdir, str(workdir / "two.yaml"), *args)


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fused")
    shutil.copytree(ROOT / "config", workdir / "config")
    rows = ["slide_id\tpath\tmpp\tsplit\tannotations"]
    for slide, split in SHEET.items():
        ann = f"results/demo/{slide}.geojson" if split in ("validation", "test") else ""
        rows.append(f"{slide}\tresults/demo/{slide}.tif\t\t{split}\t{ann}")
    (workdir / "config" / "five.tsv").write_text("\n".join(rows) + "\n")
    extra = {"slides": "config/five.tsv", "detectors": DETECTORS, "fusion": {"method": "fisher"}}
    (workdir / "two.yaml").write_text(yaml.safe_dump(extra, sort_keys=False))  # detector order matters
    snakemake(workdir, "--cores", "2")
    return workdir


def test_rerun_has_nothing_to_do(fused_run):
    proc = snakemake(fused_run, "--cores", "1", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_fused_score_is_fisher_of_each_detectors_tail_probability(fused_run):
    res = fused_run / "results"
    fit = json.loads((res / "fusion" / "threshold.json").read_text())
    assert fit["detectors"] == ["fine", "coarse"] and fit["method"] == "fisher"
    slide = "demo_test"
    fused = read_level0(res / "slides" / slide / "maps" / "mahalanobis_d2.tif")
    pvalues = []
    for d in DETECTORS:
        meta = json.loads((res / "detectors" / d / "slides" / slide / "maps.json").read_text())
        th = json.loads((res / "detectors" / d / "calibration" / "threshold.json").read_text())
        d2 = read_level0(res / "detectors" / d / "slides" / slide / "maps" / "mahalanobis_d2.tif").astype(float)
        std = meta["slide_standardisation"]
        assert std["method"] == "robust"  # the demo config standardises per slide
        z = (d2 - std["median"]) / std["scale"]
        pvalues.append(tail_probability(z, *histogram_of(th["slide_standardisation"]["z_histogram_normal"])))
    both = np.isfinite(pvalues[0]) & np.isfinite(pvalues[1])
    assert both.sum() > 1000
    rows, cols = np.nonzero(both)
    pick = np.random.default_rng(0).choice(len(rows), 200, replace=False)
    for r, c in zip(rows[pick], cols[pick], strict=True):
        want = sps.combine_pvalues([pvalues[0][r, c], pvalues[1][r, c]], method="fisher").pvalue
        assert fused[r, c] == pytest.approx(-np.log10(want), rel=1e-4, abs=1e-5)
    # a pixel one detector did not score carries the other's evidence; none scored: NaN
    np.testing.assert_array_equal(np.isnan(fused), np.isnan(pvalues[0]) & np.isnan(pvalues[1]))


def test_fused_flags_are_the_fused_score_above_the_fused_tau(fused_run):
    res = fused_run / "results"
    tau = json.loads((res / "fusion" / "threshold.json").read_text())["tau"]
    for slide in ("demo_validation", "demo_validation_normal", "demo_test"):
        score = read_level0(res / "slides" / slide / "maps" / "mahalanobis_d2.tif")
        flags = read_level0(res / "slides" / slide / "maps" / "flags.tif")
        scored = ~np.isnan(score)
        np.testing.assert_array_equal(np.isnan(flags), ~scored)
        np.testing.assert_array_equal(flags[scored] > 0, score[scored] > tau)
        meta = json.loads((res / "slides" / slide / "maps.json").read_text())
        assert meta["slide_standardisation"]["method"] == "fused" and meta["slide_standardisation"]["tau"] == tau
        assert set(meta["fusion"]["detectors"]) == set(DETECTORS)


def test_fused_tau_leaves_the_configured_share_of_normal_pixels_flagged(fused_run):
    fit = json.loads((fused_run / "results" / "fusion" / "threshold.json").read_text())
    q = fit["quantile"]
    assert q["q"] == 0.999 and q["n"] == sum(s["normal_pixels"] for s in fit["slides"].values())
    assert q["flagged_fraction"] <= 1 - q["q"] + 1e-9
    assert set(fit["slides"]) == {"demo_validation", "demo_validation_normal"}


def test_evaluation_and_report_read_the_fused_maps(fused_run):
    res = fused_run / "results"
    fused = read_level0(res / "slides" / "demo_test" / "maps" / "mahalanobis_d2.tif")
    fine = read_level0(res / "detectors" / "fine" / "slides" / "demo_test" / "maps" / "mahalanobis_d2.tif")
    sampled = pd.read_parquet(res / "eval" / "demo_test" / "pixels.parquet")["mahalanobis_d2"].to_numpy()
    sampled = sampled[np.isfinite(sampled)]
    assert sampled.size > 100
    # evaluate_slide's pixel sample holds values of the fused score map, not of a detector's d² map
    assert np.isin(sampled, fused[np.isfinite(fused)]).all()
    assert not np.isin(sampled, fine[np.isfinite(fine)]).all()
    assert (res / "eval" / "demo_test" / "predicted.geojson").is_file()
    assert (res / "report" / "overlays" / "demo_test.png").is_file()
    # QuPath's per-patch tiles are the first detector's
    tiles = res / "detectors" / "fine" / "slides" / "demo_test" / "tiles.geojson"
    assert (res / "slides" / "demo_test" / "tiles.geojson").read_bytes() == tiles.read_bytes()
