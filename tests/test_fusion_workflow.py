"""End-to-end: two detectors (16 px at 4 and at 8 µm/px) on five demo slides, fused into the maps evaluation reads.

The reduced test config, a five-slide sheet (train, calibrate, an annotated and a normal-only validation slide, a
test slide) and `detectors: {fine, coarse}`; checks that the fused maps are what fusion.py defines, computed again here
from the detectors' own maps with scipy's combine_pvalues, and that everything downstream read them; and that the
evaluation scores each detector alone at the same sampled pixels, pooled beside the fused score.
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


def own_pvalues(res: Path, slide: str) -> dict[str, np.ndarray]:
    """Each detector's tail probability map of a slide, from its own maps.json, d² map and threshold.json."""
    out = {}
    for d in DETECTORS:
        meta = json.loads((res / "detectors" / d / "slides" / slide / "maps.json").read_text())
        th = json.loads((res / "detectors" / d / "calibration" / "threshold.json").read_text())
        d2 = read_level0(res / "detectors" / d / "slides" / slide / "maps" / "mahalanobis_d2.tif").astype(float)
        std = meta["slide_standardisation"]
        assert std["method"] == "robust"  # the demo config standardises per slide
        z = (d2 - std["median"]) / std["scale"]
        out[d] = tail_probability(z, *histogram_of(th["slide_standardisation"]["z_histogram_normal"]))
    return out


def test_rerun_has_nothing_to_do(fused_run):
    proc = snakemake(fused_run, "--cores", "1", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_fused_score_is_fisher_of_each_detectors_tail_probability(fused_run):
    res = fused_run / "results"
    fit = json.loads((res / "fusion" / "threshold.json").read_text())
    assert fit["detectors"] == ["fine", "coarse"] and fit["method"] == "fisher"
    slide = "demo_test"
    fused = read_level0(res / "slides" / slide / "maps" / "mahalanobis_d2.tif")
    pvalues = list(own_pvalues(res, slide).values())
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


def test_evaluation_scores_each_detector_alone_at_the_pixels_sampled_of_the_fused_maps(fused_run):
    res = fused_run / "results"
    columns = {d: f"detector:{d}" for d in DETECTORS}
    rng = np.random.default_rng(1)
    for slide in ("demo_validation", "demo_validation_normal", "demo_test"):
        sample = pd.read_parquet(res / "eval" / slide / "pixels.parquet")
        assert set(columns.values()) <= set(sample.columns)
        own = {d: -np.log10(p) for d, p in own_pvalues(res, slide).items()}
        # pixels.parquet keeps no pixel positions: each sampled pixel is found again by its fused score
        fused = read_level0(res / "slides" / slide / "maps" / "mahalanobis_d2.tif").ravel()
        finite = np.flatnonzero(np.isfinite(fused))
        order = finite[np.argsort(fused[finite], kind="stable")]
        values = fused[order]
        rows = rng.choice(len(sample), min(300, len(sample)), replace=False)
        for i in rows:
            f = sample["mahalanobis_d2"].iloc[i]
            at = order[np.searchsorted(values, f, "left") : np.searchsorted(values, f, "right")]
            assert at.size, (slide, i)
            match = np.ones(at.size, bool)
            for d, col in columns.items():
                got, want = sample[col].iloc[i], own[d].ravel()[at]
                match &= np.isclose(want, got, rtol=1e-9, atol=0) | (np.isnan(want) & np.isnan(got))
            assert match.any(), (slide, i, sample.iloc[i].to_dict())
        # and the two detectors' own scores of a row are what the fused score of that row combines
        both = sample[list(columns.values())].notna().all(axis=1).to_numpy()
        assert both.sum() > 100
        for i in rng.choice(np.flatnonzero(both), 100, replace=False):
            p = [10 ** -sample[col].iloc[i] for col in columns.values()]
            want = -np.log10(sps.combine_pvalues(p, method="fisher").pvalue)
            assert sample["mahalanobis_d2"].iloc[i] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_pooled_metrics_hold_each_detectors_pixel_auroc(fused_run):
    from sklearn.metrics import roc_auc_score

    res = fused_run / "results"
    for split in ("validation", "test"):
        m = json.loads((res / "eval" / "pooled" / split / "metrics.json").read_text())
        pixels = pd.concat(
            [pd.read_parquet(res / "eval" / s / "pixels.parquet") for s in m["slides"]], ignore_index=True
        )
        for d in DETECTORS:
            col = f"detector:{d}"
            ok = np.isfinite(pixels[col])
            want = roc_auc_score(pixels["label"][ok], pixels[col][ok], sample_weight=pixels["weight"][ok])
            assert m["pixel"][col]["auroc"] == pytest.approx(want, abs=1e-12), (split, col)
            for named in m["per_class"].values():
                for part in named.values():
                    assert col in part["pixel"]
