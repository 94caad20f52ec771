"""Report figures on synthetic inputs of the documented formats: figures exist, axes are labelled, the marked cells
and lines sit where numpy / sklearn say they should."""

import json

import matplotlib.patches as mpatches
import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from proganomaly.calibration import stats, threshold
from proganomaly.evaluation import metrics
from proganomaly.report import calibration, evaluation, qc, slides, software, style, tables, training

RNG = np.random.default_rng(7)


def labelled(ax) -> bool:
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


# ------------------------------------------------------------------------------------------------------------ style


def test_save_writes_png_at_150_dpi(tmp_path):
    fig, axes = style.subplots()
    axes[0, 0].plot([0, 1], [0, 1])
    path = style.save(fig, tmp_path / "sub" / "f.png")
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert round(im.info["dpi"][0]) == style.DPI
    assert not list(tmp_path.rglob(".*tmp*"))


# --------------------------------------------------------------------------------------------------------------- QC


def manifest(slide, count, sizes=(4, 8, 16)):
    return {"slide_id": slide, "resolutions": {str(s): {"count": count, "shards": []} for s in sizes}}


def test_patch_counts_plot():
    counts = qc.patch_counts([manifest("a", 30), manifest("b", 12), manifest("c", 0)])
    assert len(counts) == 9 and counts.groupby("slide_id")["count"].nunique().eq(1).all()
    fig = qc.plot_patch_counts(counts, {"a": "train", "b": "test", "c": "calibrate"})
    ax_bar, ax_heat = fig.axes[:2]
    widths = [p.get_width() for p in ax_bar.patches if isinstance(p, mpatches.Rectangle)][:3]
    assert widths == [30, 12, 0]
    assert [t.get_text() for t in ax_bar.get_yticklabels()] == ["a", "b", "c"]
    assert sorted(int(t.get_text()) for t in ax_heat.texts) == sorted([30] * 3 + [12] * 3 + [0] * 3)
    assert labelled(ax_bar) and ax_heat.get_xlabel()
    assert any("patches" in a.get_ylabel() for a in fig.axes[2:])  # the colour bar


def test_slide_table_and_summary():
    sheet = pd.DataFrame(
        {"split": ["train", "test"], "annotations": [None, "t.geojson"]}, index=pd.Index(["a", "b"], name="slide_id")
    )
    qcs = {
        "a": {"dimensions": {"width": 2000, "height": 1000}, "mpp": 0.5, "tissue_fraction": 0.25, "patch_count": 7},
        "b": {"dimensions": {"width": 400, "height": 300}, "mpp": 0.25, "tissue_fraction": 1.0, "patch_count": 3},
    }
    table = qc.slide_table(sheet, qcs)
    np.testing.assert_allclose(table["area (mm²)"], [2000 * 1000 * 0.25 / 1e6, 400 * 300 * 0.0625 / 1e6])
    np.testing.assert_allclose(table["tissue area (mm²)"], [0.5 * 0.25, 0.0075])
    assert table["annotated"].tolist() == [False, True]
    summary = qc.split_summary(table)
    assert summary["split"].tolist() == ["train", "test"] and summary["patches"].tolist() == [7, 3]
    html = tables.page("Slides", [("Per slide", table)])
    assert html.count("<tr>") == 3 and "mm²" in html and "<script" not in html


def test_table_html_escapes():
    html = tables.table_html(pd.DataFrame({"name": ["<b>x</b>"], "v": [float("nan")]}))
    assert "&lt;b&gt;" in html and "<b>" not in html and "–" in html


# ------------------------------------------------------------------------------------------------------ calibration


def error_distribution():
    e = np.abs(RNG.normal(0, [0.05, 0.08, 0.04], size=(20000, 3)))
    edges = stats.linear_edges(0.0, 2.0, 2000)
    return {
        "channels": ["R", "G", "B"],
        "n_pixels": len(e),
        "mean": e.mean(0).tolist(),
        "covariance": np.cov(e.T).tolist(),
        "histograms": {c: stats.histogram_record(stats.bin_counts(e[:, i], edges), edges) for i, c in enumerate("RGB")},
    }


def threshold_record(supervised=True):
    d2n, d2a = RNG.chisquare(3, 5000), RNG.chisquare(3, 400) * 30
    edges = stats.log_edges(1e-4, 1e8, 100)
    d2 = np.concatenate([d2n, d2a])
    rec = {
        "method": "unsupervised",
        "unsupervised": {"tau": float(d2.mean() + 3 * d2.std(ddof=1)), "k": 3.0},
        "supervised": None,
        "d2_histogram": stats.histogram_record(stats.bin_counts(d2, edges), edges),
    }
    rec["tau"] = rec["unsupervised"]["tau"]
    if supervised:
        labels = np.r_[np.zeros(d2n.size, bool), np.ones(d2a.size, bool)]
        curve = threshold.fbeta_curve_exact(d2, labels, 0.5)
        sup = threshold.best_threshold(curve, 0.5, "exact")
        sup["curve"] = threshold.curve_record(curve)
        rec["supervised"] = sup
        rec["d2_histogram_by_label"] = {
            "normal": stats.histogram_record(stats.bin_counts(d2n, edges), edges),
            "anomalous": stats.histogram_record(stats.bin_counts(d2a, edges), edges),
        }
    return rec


def test_rebin_keeps_counts():
    edges, counts = np.linspace(0, 1, 11), RNG.integers(0, 100, 10).astype(float)
    e, c = calibration.rebin(edges, counts, 3)
    assert c.sum() == counts.sum() and e[0] == 0 and e[-1] == 1 and len(e) == len(c) + 1 == 5
    np.testing.assert_array_equal(c, [counts[:3].sum(), counts[3:6].sum(), counts[6:9].sum(), counts[9]])


def test_error_distribution_figure():
    ed = error_distribution()
    fig = calibration.plot_error_distribution(ed)
    ax, ax_corr = fig.axes[:2]
    stairs = [p for p in ax.patches if isinstance(p, mpatches.StepPatch)]
    assert len(stairs) == 3
    assert [t.get_text()[0] for t in ax.get_legend().get_texts()] == ["R", "G", "B"]
    means = sorted(line.get_xdata()[0] for line in ax.get_lines())
    np.testing.assert_allclose(means, sorted(ed["mean"]))
    sd = np.sqrt(np.diag(ed["covariance"]))
    corr = np.asarray(ed["covariance"]) / np.outer(sd, sd)
    shown = [float(t.get_text()) for t in ax_corr.texts]
    np.testing.assert_allclose(shown, corr.ravel(), atol=0.005)
    assert labelled(ax) and ax.get_yscale() == "log"


def test_d2_histogram_marks_both_taus():
    th = threshold_record()
    ax = calibration.plot_d2_histogram(th).axes[0]
    vlines = sorted(line.get_xdata()[0] for line in ax.get_lines() if len(line.get_xdata()) == 2)
    np.testing.assert_allclose(vlines, sorted([th["unsupervised"]["tau"], th["supervised"]["tau"]]))
    assert len([p for p in ax.patches if isinstance(p, mpatches.StepPatch)]) == 3  # all, normal, anomalous
    assert ax.get_xscale() == "log" and labelled(ax)
    # the per-decade densities integrate to 1 over log10(d²)
    step = next(p for p in ax.patches if isinstance(p, mpatches.StepPatch))
    values, edges = step.get_data()[:2]
    assert np.sum(values * np.diff(np.log10(edges))) == pytest.approx(1.0)


def test_fbeta_curve_best_point_is_the_argmax():
    th = threshold_record()
    ax = calibration.plot_fbeta_curve(th).axes[0]
    curve = th["supervised"]["curve"]
    i = int(np.argmax(curve["f"]))
    marker = next(line for line in ax.get_lines() if line.get_marker() == "o" and len(line.get_xdata()) == 1)
    assert marker.get_xdata()[0] == curve["thresholds"][i] and marker.get_ydata()[0] == curve["f"][i]
    assert labelled(ax)


def test_fbeta_without_annotations_says_so():
    fig = calibration.plot_fbeta_curve(threshold_record(supervised=False))
    assert "No annotated" in " ".join(t.get_text() for t in fig.axes[0].texts)


# ------------------------------------------------------------------------------------------------------- evaluation


def pixel_grid(thresholds=(0.2, 0.4, 0.6, 0.8), dilations=(1.0, 1.5, 2.0), n=4000):
    """A grid whose areas are pixel counts of random masks, kept for an sklearn reference."""
    truth = RNG.random(n) < 0.2
    score = np.where(truth, RNG.random(n) * 0.6 + 0.4, RNG.random(n) * 0.7)
    rows, masks = [], {}
    for t in thresholds:
        for d in dilations:
            pred = score * d > t * 1.5
            masks[(t, d)] = pred
            rows.append(
                {
                    "threshold": t,
                    "dilation": d,
                    "dilation_mode": "scale",
                    "true_positive": float((pred & truth).sum()),
                    "false_positive": float((pred & ~truth).sum()),
                    "false_negative": float((~pred & truth).sum()),
                    "true_negative": float((~pred & ~truth).sum()),
                }
            )
    return pd.DataFrame(rows), truth, masks


def test_metrics_match_sklearn():
    grid, truth, masks = pixel_grid()
    m = metrics.cell_metrics(grid)
    for row in m.itertuples():
        pred = masks[(row.threshold, row.dilation)]
        assert row.f1 == pytest.approx(f1_score(truth, pred))
        assert row.iou == pytest.approx(jaccard_score(truth, pred))
        assert row.recall == pytest.approx(recall_score(truth, pred))
        if pred.any():
            assert row.precision == pytest.approx(precision_score(truth, pred))
        assert row.fpr == pytest.approx((pred & ~truth).sum() / (~truth).sum())


def test_undefined_metrics_are_nan():
    g = pd.DataFrame([{"threshold": 0.5, "dilation": 1.0, **dict.fromkeys(metrics.AREAS, 0.0)}])
    m = metrics.cell_metrics(g)
    assert np.isnan(m[["precision", "recall", "f1", "iou", "fpr"]].to_numpy()).all()
    assert evaluation.best_cell(evaluation.metric_matrix(m, "f1")) is None
    with pytest.raises(ValueError, match="true_positive"):
        metrics.cell_metrics(g.drop(columns="true_positive"))


def test_grid_heatmap_marks_the_argmax():
    grid, _, _ = pixel_grid()
    fig = evaluation.plot_grid_heatmaps(grid, "Slide s")
    m = metrics.cell_metrics(grid)
    for ax, metric in zip(fig.axes[:2:], ("f1", "iou"), strict=True):
        matrix = m.pivot(index="threshold", columns="dilation", values=metric).to_numpy()
        r, c = np.unravel_index(np.nanargmax(matrix), matrix.shape)
        boxes = [p for p in ax.patches if isinstance(p, mpatches.Rectangle) and p.get_edgecolor()[:3] == (1, 0, 0)]
        assert len(boxes) == 1 and boxes[0].get_xy() == (c, r)
        assert f"{matrix[r, c]:.3f}" in ax.get_title()
        assert labelled(ax)
    assert {a.get_ylabel() for a in fig.axes[2:]} == {"F1 score", "IoU (Jaccard)"}  # colour bars


def test_pooled_sums_areas():
    g1, _, _ = pixel_grid()
    g2, _, _ = pixel_grid()
    pooled = metrics.pool_grids(
        [metrics.with_metrics(g.assign(num_polygons=1, tissue_area=1e4), mpp=0.5) for g in (g1, g2)]
    )
    np.testing.assert_allclose(pooled["true_positive"], g1["true_positive"] + g2["true_positive"])
    # the report plots the pooled grid's own metrics: µm² sums, the same cells as metrics.json
    np.testing.assert_allclose(metrics.cell_metrics(pooled)["f1"], pooled["f1"])
    tp, fp, fn = (pooled[c] for c in ("true_positive", "false_positive", "false_negative"))
    np.testing.assert_allclose(pooled["f1"], 2 * tp / (2 * tp + fp + fn))


def test_best_rows_and_flatten():
    grid, _, _ = pixel_grid()
    best = evaluation.best_rows({"s": grid})
    m = metrics.cell_metrics(grid)
    assert best["f1"].iloc[0] == m["f1"].max()
    flat = evaluation.flatten_metrics({"best": {"f1": 0.5, "threshold": 0.2}, "provenance": {"x": 1}, "n": 3})
    assert flat == {"best.f1": 0.5, "best.threshold": 0.2, "n": 3}


# --------------------------------------------------------------------------------------------------------- training


def loss_log(phases=3, rows=40, batch=16, rate=500.0):
    """Columns as training.loop writes them (meta, totals, then the step's terms)."""
    out, images = [], 0
    for p in range(phases):
        for _ in range(rows):
            images += batch
            out.append(
                {
                    "global_step": images // batch,
                    "phase_index": p,
                    "phase": f"{4 * 2 ** ((p + 1) // 2)}px-{'fade' if p % 2 else 'stable'}",
                    "images_seen": images,
                    "images_per_s": rate * (1 + 0.1 * RNG.standard_normal()) if p else rate,
                    "D(x)": RNG.normal(),
                    "discriminator_total_loss": RNG.normal(),
                    "generator_total_loss": RNG.normal(),
                    "generator_reg_loss": 0.0,
                    "D(G(x))": RNG.normal(),
                    "D(G(x))-D(x)": RNG.normal(),
                    "D(G(x))_gradient_penalty": abs(RNG.normal()),
                    "D(G(x))_for_generator": RNG.normal(),
                    "x_minus_G_of_x_l1": np.exp(-images / 500),
                }
            )
    return pd.DataFrame(out)


def test_loss_groups_of_the_step_names():
    assert training.loss_group("D(G(x))_wgan_gp") == "critic"
    assert training.loss_group("D(G(x))-D(x)") == "critic"
    assert training.loss_group("epsilon_drift_penalty") == "critic"
    assert training.loss_group("D(G(E(x)))_for_generator") == "adversarial"
    assert training.loss_group("x_minus_G_of_x_l1") == "reconstruction"
    assert training.loss_group("z_minus_E_of_G_of_z_l2") == "reconstruction"
    for other in ("generator_total_loss", "discriminator_total_loss", "encoder_reg_loss", "D(x)", "D(G(x))", "alpha"):
        assert training.loss_group(other) is None


def test_loss_figure_panels_and_phases():
    log = loss_log()
    fig = training.plot_losses(log, smooth_points=5)
    axes = [a for a in fig.axes if a.get_ylabel().endswith("loss")]
    assert [a.get_ylabel() for a in axes] == ["critic loss", "adversarial loss", "reconstruction loss"]
    legend = {t.get_text() for a in axes for t in a.get_legend().get_texts()}
    assert legend == {"D(G(x))-D(x)", "D(G(x))_gradient_penalty", "D(G(x))_for_generator", "x_minus_G_of_x_l1"}
    assert [t.get_text() for t in axes[0].texts] == ["4px-stable", "8px-fade", "8px-stable"]
    assert axes[-1].get_xlabel() == "images seen (count)"
    # one line per (term, phase): the rolling mean never bridges a phase boundary
    assert len([ln for ln in axes[2].get_lines() if len(ln.get_xdata())]) == 3
    with pytest.raises(ValueError, match="progress"):
        training.plot_losses(log.drop(columns=["images_seen", "global_step"]))


def test_throughput_is_the_median_per_phase():
    log = loss_log(rate=250.0)
    table = training.throughput(log)
    expected = log.groupby("phase", sort=False)["images_per_s"].median()
    np.testing.assert_allclose(table["images_per_second"], expected.to_numpy())
    assert table["images_per_second"].iloc[0] == 250.0
    fig = training.plot_throughput(table)
    assert len(fig.axes[0].patches) == 3 and labelled(fig.axes[0])


def test_throughput_from_wall_time():
    log = loss_log().drop(columns="images_per_s").assign(wall_seconds=lambda d: d["images_seen"] / 125.0)
    np.testing.assert_allclose(training.throughput(log)["images_per_second"], 125.0)


def test_heldout_figure():
    table = pd.DataFrame(
        {
            "phase": ["4px-stable", "8px-fade", "8px-stable"],
            "images_seen": [100, 200, 300],
            "examples": 64,
            "l1": [0.3, 0.2, 0.1],
            "l2": [0.09, 0.04, 0.01],
            "l1_full": [0.4, 0.3, 0.2],
            "l2_full": [0.16, 0.09, 0.04],
            "l1_full_floor": [0.35, 0.1, 0.1],
            "l2_full_floor": [0.1, 0.01, 0.01],
        }
    )
    fig = training.plot_heldout(table)
    ax1, ax2 = fig.axes[:2]
    assert len(ax1.get_lines()) == len(ax2.get_lines()) == 3
    np.testing.assert_allclose(ax2.get_lines()[0].get_ydata(), table["l2_full"])
    assert labelled(ax1) and labelled(ax2) and "64" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="l2_full"):
        training.plot_heldout(table.drop(columns="l2_full"))


# ----------------------------------------------------------------------------------------------------------- slides


def test_read_map_picks_a_pyramid_level(tmp_path):
    from proganomaly.maps.pyramid import write_pyramid

    image = RNG.random((600, 1000)).astype(np.float32)
    write_pyramid(tmp_path / "m.tif", image, 1.0, tile=128, compression="deflate")
    assert slides.read_map(tmp_path / "m.tif", 400).shape == (300, 500)
    assert slides.read_map(tmp_path / "m.tif", 5000).shape == (600, 1000)


@pytest.mark.parametrize("size", [(1200, 300), (500, 500)])
def test_slide_panels(size):
    w, h = size
    thumb = RNG.integers(0, 255, (h // 2, w // 2, 3), dtype=np.uint8)  # any downsample: extent is level 0 in mm
    d2 = RNG.chisquare(3, (h // 4, w // 4))
    kde = RNG.random((h // 4, w // 4))
    ann = [shapely.box(100, 50, 200, 150), shapely.box(300, 60, 340, 90)]
    pred = [shapely.Point(150, 100).buffer(40)]
    fig = slides.plot_slide_panels(
        "s1", thumbnail=thumb, d2=d2, kde=kde, level0_size=(w, h), mpp=0.5, tau=7.8, annotations=ann, predicted=pred
    )
    panels = [a for a in fig.axes if a.get_title()]
    assert len(panels) == 4 and all(a.get_xlabel() == "x (mm)" and a.get_ylabel() == "y (mm)" for a in panels)
    assert panels[0].get_xlim() == pytest.approx((0, w * 0.5 / 1000))
    assert [t.get_text() for t in panels[3].get_legend().get_texts()] == [
        "annotation (2 polygons)",
        "predicted (1 polygon)",
    ]
    ring = panels[3].collections[0].get_paths()[0].vertices
    assert ring[:, 0].max() == pytest.approx(200 * 0.5 / 1000)
    cbar_labels = {a.get_ylabel() for a in fig.axes if not a.get_title()}
    assert {"d² (log scale)", "KDE heat map (0–1)"} <= cbar_labels
    assert fig._suptitle.get_text() == "Slide s1"


# --------------------------------------------------------------------------------------------------------- software


def test_parse_env_and_versions(tmp_path):
    env = tmp_path / "x.yaml"
    env.write_text(
        "name: x\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n      - numpy==0.0.1\n      - seaborn\n"
    )
    assert software.parse_env(env.read_text()) == [
        {"source": "conda", "package": "python", "pinned": "3.11"},
        {"source": "pip", "package": "numpy", "pinned": "0.0.1"},
        {"source": "pip", "package": "seaborn", "pinned": None},
    ]
    table = software.environments_table([env]).set_index("package")
    assert table.loc["python", "status"] == "match"
    assert table.loc["numpy", "status"] == "differs" and table.loc["numpy", "installed"] == np.__version__
    assert table.loc["seaborn", "status"] == "unpinned"


def test_config_yaml_round_trip():
    import yaml

    cfg = {"tiling": {"patch_size_px": 64, "target_mpp": None}, "seed": 1, "report": {"splits": ["test"]}}
    text = software.config_yaml(cfg, "# header")
    assert text.startswith("# header") and yaml.safe_load(text) == cfg
    assert json.dumps(yaml.safe_load(text)) == json.dumps(cfg)  # key order kept


def test_pixel_curves_and_summary_from_metrics_json():
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = RNG.random(500) < 0.3
    score = labels + RNG.normal(0, 0.8, 500)
    fpr, tpr, _ = roc_curve(labels, score)
    pixel = {"kde": {"auroc": roc_auc_score(labels, score), "average_precision": 0.5,
                     "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}, "pr": {"recall": [1, 0], "precision": [0.3, 1]}}}  # fmt: skip
    metrics = {
        "s": {"pixel": pixel, "best_f1": {"value": 0.4, "threshold": 0.2, "dilation": 1.0}},
        "pooled/test": {"pixel": pixel, "at_operating_point": {"all": {"f1": 0.3}, "class": {"x": {"f1": 0.1}}}},
    }
    fig = evaluation.plot_pixel_curves(metrics)
    ax_roc = fig.axes[0]
    pooled_line = next(ln for ln in ax_roc.get_lines() if ln.get_label().startswith("pooled"))
    np.testing.assert_allclose(pooled_line.get_xdata(), fpr)
    assert f"{roc_auc_score(labels, score):.3f}" in pooled_line.get_label() and labelled(ax_roc)
    table = evaluation.metrics_summary(metrics)
    assert table.loc[0, "oracle best_f1.value"] == 0.4 and table.loc[1, "auroc (KDE heat map)"] == pixel["kde"]["auroc"]
    assert table.loc[1, "at_operating_point.all.f1"] == 0.3 and not any("class" in c for c in table.columns)


def test_class_curves_and_table():
    from proganomaly.report import classes

    def res(auroc):
        return {"auroc": auroc, "average_precision": auroc / 2, "roc": {"fpr": [0, 0.5, 1], "tpr": [0, auroc, 1]},
                "pr": {"recall": [1, 0], "precision": [0.2, 1]}}  # fmt: skip

    part = {"pixel": {"kde": res(0.9)}, "oracle_best_f1": {"f1": 0.7, "threshold": 0.1, "dilation": 2.0}}
    pooled = {
        "slides": ["a", "b"],
        "annotation_classes": {"ihc": "foreign stain", "blur": "artefact"},
        "pixel": {"kde": res(0.8)},
        "best_f1": {"f1": 0.6, "threshold": 0.1, "dilation": 1.0},
        "per_class": {"class": {"ihc": part, "blur": {"pixel": {"kde": res(0.6)}}}, "group": {"foreign stain": part}},
        "at_operating_point": {"all": {"f1": 0.5}, "class": {"ihc": {"f1": 0.4, "recall": 0.9}}, "group": {}},
    }
    fig = classes.plot_class_curves(pooled, "t")
    labels = [ln.get_label() for ln in fig.axes[0].get_lines()]
    assert labels[:3] == ["ihc (AUROC 0.900)", "blur (AUROC 0.600)", "all classes (AUROC 0.800)"]
    table = classes.class_table({"test": pooled}).set_index("name")
    assert list(table.index) == ["all classes", "ihc", "blur", "foreign stain"]
    assert table.loc["ihc", "group"] == "foreign stain" and table.loc["ihc", "AUROC (KDE heat map)"] == 0.9
    assert table.loc["ihc", "f1 at operating point"] == 0.4 and table.loc["ihc", "oracle best-cell F1"] == 0.7
    assert table.loc["all classes", "f1 at operating point"] == 0.5 and pd.isna(
        table.loc["blur", "oracle best-cell F1"]
    )
    assert "fixed" in classes.operating_point_text({"threshold": 0.2, "dilation": 1, "source": "fixed", "reason": "r"})


def test_scorer_comparison_table_and_figure():
    from proganomaly.report import scorers

    def cell(auroc, sd, n=3):
        return {"mahalanobis_d2": {"auroc_mean": auroc, "auroc_sd": sd, "ap_mean": auroc / 2, "ap_sd": 0.0, "n": n}}

    summary = {
        "default": {
            "rgb_error": {"all": {"validation": cell(0.5, 0.1), "test": cell(0.6, 0.05)},
                          "group:artefacts": {"validation": cell(0.4, 0.02), "test": cell(0.45, 0.01)}},
            "critic": {"all": {"validation": cell(0.7, 0.0), "test": cell(0.72, 0.01)}},
        },
        "no_skips": {"critic": {"all": {"validation": cell(0.65, 0.0, 1), "test": cell(0.66, 0.0, 1)},
                                "class:ihc": {"test": cell(0.9, 0.0, 1)}}},
    }  # fmt: skip
    table = scorers.comparison_table(summary)
    assert list(table.columns) == ["anomalies", "variant", "scorer", "AUROC validation", "AP validation",
                                   "AUROC test", "AP test", "seeds"]  # fmt: skip
    assert table["anomalies"].tolist() == ["all anomalies"] * 3 + ["artefacts"]
    first = table.iloc[0]
    assert (first["scorer"], first["AUROC validation"], first["AUROC test"], first["seeds"]) == (
        "rgb_error",
        "0.500 ± 0.100",
        "0.600 ± 0.050",
        3,
    )
    assert table.iloc[2]["variant"] == "no_skips" and table.iloc[2]["seeds"] == 1
    fig = scorers.plot_comparison(summary, chosen="critic")
    ax_all, ax_art = fig.axes[:2]
    assert [t.get_text() for t in ax_all.get_yticklabels()] == ["rgb_error", "critic", "critic [no_skips]"]
    bold = [t.get_text() for t in ax_all.get_yticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["critic"]
    # Each plotted point sits at its mean AUROC (validation first, then test, per row).
    xs = [line.get_xdata()[0] for line in ax_all.lines if line.get_marker() in ("o", "s")]
    assert xs == [0.5, 0.6, 0.7, 0.72, 0.65, 0.66]
    assert [line.get_xdata()[0] for line in ax_art.lines if line.get_linestyle() == "--"] == [0.85]


def test_grid_heatmap_marks_the_operating_point_and_flag_everything_f1():
    grid, truth, _ = pixel_grid()
    op = {"threshold": 0.2, "dilation": 1.0, "source": "best_f1_within_budget"}
    fig = evaluation.plot_grid_heatmaps(grid, "Slide s", operating_point=op)
    m = metrics.cell_metrics(grid)
    matrix = m.pivot(index="threshold", columns="dilation", values="f1")
    r, c = list(matrix.index).index(0.2), list(matrix.columns).index(1.0)
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, mpatches.Rectangle) and p.get_edgecolor()[:3] == (1, 1, 1)]
    assert len(boxes) == 1 and boxes[0].get_xy() == (c, r)
    # Flagging everything: F1 = 2p / (1 + p), sklearn on an all-positive prediction.
    assert f"{f1_score(truth, np.ones_like(truth)):.3f}" in ax.get_title()
    assert f"{matrix.iat[r, c]:.3f}" in ax.get_title()


def test_metrics_table_has_the_specificity_columns_and_froc_figure():
    froc = {"threshold": [0.0, 0.5, 1.0], "fp_area_mm2_per_mm2": [0.6, 0.01, 0.0],
            "lesion_sensitivity": [1.0, 0.5, 0.0], "dilation": 2.0, "lesions": 4, "operating_threshold": 0.5}  # fmt: skip
    spec = {"normal_only_slides": ["n1"], "normal_tissue_in_polygons": 0.004, "normal_tissue_flagged": 0.2,
            "kde_above_0.25": 0.01, "fp_area_mm2_per_mm2": 0.003, "lesion_sensitivity": 0.5,
            "f1_at_operating_point": 0.4, "f1_flag_everything": 0.18, "best_f1": 0.5, "warnings": [], "froc": froc}  # fmt: skip
    metrics_ = {
        "s": {"specificity": {"normal_only": False, "warning": "s: covers 80 %", "f1_flag_everything": 0.2}},
        "pooled/test": {"specificity": spec, "at_operating_point": {"all": {"f1": 0.4}}},
    }
    table = evaluation.metrics_summary(metrics_)
    assert table.loc[1, "normal tissue in polygons"] == 0.004 and table.loc[1, "F1 flagging everything"] == 0.18
    assert table.loc[1, "normal only"] == "n1" and table.loc[0, "warning"] == "s: covers 80 %"
    assert table.loc[0, "normal only"] == False  # noqa: E712
    assert not any(c.startswith("specificity.") for c in table.columns)
    fig = evaluation.plot_froc({"test": froc})
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), froc["fp_area_mm2_per_mm2"])
    np.testing.assert_allclose(line.get_ydata(), froc["lesion_sensitivity"])
    assert labelled(fig.axes[0])


# ------------------------------------------------------------------------------------------------- issue 20: figures


def test_save_writes_an_svg_twin_beside_each_png_identical_on_rerun(tmp_path):
    import xml.etree.ElementTree as ET

    def figure():
        fig, axes = style.subplots()
        axes[0, 0].plot([0, 1], [0, 1], label="line")
        axes[0, 0].set_title("T")
        return fig

    png = style.save(figure(), tmp_path / "f.png")
    svg = style.vector_twin(png)
    assert svg == tmp_path / "f.svg" and svg.is_file()
    root = ET.fromstring(svg.read_bytes())  # well-formed SVG, its text kept as glyph paths or text
    assert root.tag.endswith("svg")
    first = svg.read_bytes()
    style.save(figure(), png)
    assert svg.read_bytes() == first  # no date, fixed ids: a rerun writes the same SVG
    style.save(figure(), tmp_path / "g.png", vector=False)
    assert not (tmp_path / "g.svg").exists()
    style.save(figure(), tmp_path / "h.svg")  # an SVG target is written once, as SVG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f.svg", "g.png", "h.svg"]


@pytest.mark.parametrize(("width", "bar"), [(500.0, 100.0), (1234.0, 200.0), (9.0, 1.0), (30000.0, 5000.0)])
def test_scale_bar_is_a_round_length_near_a_fifth_of_the_width(width, bar):
    assert slides.scale_bar_um(width) == bar
    with pytest.raises(ValueError, match="width"):
        slides.scale_bar_um(0.0)


def test_overlay_draws_kde_polygons_legend_and_scale_bar():
    from matplotlib.offsetbox import AnchoredOffsetbox

    w, h, mpp = 2000, 1000, 0.5  # level 0; the images are at other downsamples
    thumb = RNG.integers(0, 255, (h // 4, w // 4, 3), dtype=np.uint8)
    kde = RNG.random((h // 2, w // 2))
    kde[:, :100] = np.nan  # not scored: transparent
    ann = [shapely.box(100, 50, 300, 250)]
    pred = [shapely.box(120, 60, 280, 240), shapely.box(1500, 500, 1600, 600)]
    fig = slides.plot_overlay("s9", thumbnail=thumb, kde=kde, level0_size=(w, h), mpp=mpp, annotations=ann,
                              predicted=pred, split="validation", operating_point="at KDE > 0.3")  # fmt: skip
    ax = fig.axes[0]
    assert ax.get_title().startswith("Slide s9 (validation split)\nat KDE > 0.3")
    assert ax.get_xlim() == pytest.approx((0, w * mpp / 1000)) and ax.get_ylim() == pytest.approx((h * mpp / 1000, 0))
    thumb_img, kde_img = ax.get_images()
    assert thumb_img.get_array().shape == thumb.shape
    layer = kde_img.get_array()
    assert layer.mask[:, :100].all() and not layer.mask[:, 100:].any()  # NaN masked (transparent), the rest shown
    assert kde_img.get_alpha() == slides.OVERLAY_ALPHA and kde_img.get_clim() == (0, 1)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "true (annotation) (1 polygon)",
        "predicted at operating point (2 polygons)",
        "not scored: no heat-map colour",
    ]
    # Polygons in mm of the slide: level-0 px × mpp / 1000.
    true_ring = ax.collections[0].get_paths()[0].vertices
    assert true_ring[:, 0].max() == pytest.approx(300 * mpp / 1000)
    assert len(ax.collections[1].get_paths()) == 2
    bars = [a for a in ax.artists if isinstance(a, AnchoredOffsetbox)]
    assert len(bars) == 1 and bars[0].get_gid() == "scale-bar-200um"  # 1000 µm wide → 200 µm bar
    assert any(a.get_ylabel().startswith("KDE heat map") for a in fig.axes[1:])


def test_overlay_without_annotations_or_evaluation_says_so():
    fig = slides.plot_overlay("t1", thumbnail=np.zeros((10, 20, 3), np.uint8), kde=np.full((10, 20), np.nan),
                              level0_size=(200, 100), mpp=0.25, split="threshold",
                              note="no annotation file: no true polygons")  # fmt: skip
    ax = fig.axes[0]
    assert "not evaluated" in ax.get_title() and "no annotation file" in ax.get_title()
    assert ax.get_images()[1].get_array().mask.all()
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == [
        "true (annotation) (0 polygons)",
        "predicted at operating point (0 polygons)",
    ]


def test_operating_point_text_reads_the_cell_of_at_operating_point_json():
    at = {"slide_id": "s", "operating_point": {"threshold": 0.25, "dilation": 1.5, "source": "x"}, "all": {"f1": 1}}
    assert slides.operating_point_text(at) == "KDE > 0.25, dilation 1.5"
    assert slides.operating_point_text({"all": {}}) == ""


def test_scorer_comparison_bolds_the_configured_combined_scorer_not_its_namesake():
    """The demo configures combined over [critic, texture_baseline]: the benchmark's row for that is
    `combined=critic+texture_baseline`; its plain `combined` row ran the schema's default parts, and was bolded."""
    from proganomaly.config.build import load_schema
    from proganomaly.report import scorers

    def cell(auroc):
        return {"all": {s: {"mahalanobis_d2": {"auroc_mean": auroc, "auroc_sd": 0.0, "n": 1}} for s in SPLITS}}

    SPLITS = ("validation", "test")
    labels = ["rgb_error", "combined", "combined=critic+texture_baseline", "critic", "critic@k3"]
    summary = {"default": {name: cell(0.5 + i / 20) for i, name in enumerate(labels)},
               "no_skips": {"combined=critic+texture_baseline": cell(0.7)}}  # fmt: skip
    default = load_schema()["properties"]["scoring"]["properties"]["combined"]["properties"]["scorers"]["default"]
    assert scorers.benchmark_key("combined=a+b@k3") == ("combined", ("a", "b"), "k3")
    assert scorers.benchmark_key("critic") == ("critic", None, None)
    chosen = scorers.configured_labels(summary, "combined", ["critic", "texture_baseline"], default)
    assert chosen == {"combined=critic+texture_baseline"}
    assert scorers.configured_labels(summary, "combined", list(default), default) == {"combined"}
    assert scorers.configured_labels(summary, "critic", None, default) == {"critic"}  # not critic@k3
    assert scorers.configured_labels(summary, "inpainting", None, default) == set()
    fig = scorers.plot_comparison(summary, chosen=chosen)
    ticks = fig.axes[0].get_yticklabels()
    bold = [t.get_text() for t in ticks if t.get_fontweight() == "bold"]
    assert bold == ["combined=critic+texture_baseline"]  # the default variant's row only, not [no_skips]
    table = scorers.comparison_table(summary)
    flags = list((table["variant"] == "default") & table["scorer"].isin(chosen))
    html = tables.page("t", [("h", table, flags)])
    strong = [row for row in html.split("<tr") if row.startswith(' class="strong"')]
    assert len(strong) == 1 and "combined=critic+texture_baseline" in strong[0] and "default" in strong[0]
    with pytest.raises(ValueError, match="bold flags"):
        tables.table_html(table, bold=[True])


def test_metrics_reading_table_picks_the_pathologists_columns():
    at_slide = {"f1": 0.41234, "precision": 0.5, "recall": 0.35, "specificity": 0.98, "iou": 0.2}
    metrics_ = {
        "v1": {
            "pixel": {"mahalanobis_d2": {"auroc": 0.81}, "kde": {"auroc": 0.77}},
            "at_operating_point": {"all": at_slide},
            "specificity": {"normal_only": False, "normal_tissue_in_polygons": 0.02, "lesion_sensitivity": 0.5,
                            "f1_flag_everything": 0.18, "warning": None},
        },
        "n1": {
            "pixel": {"kde": {"auroc": None}},
            "at_operating_point": {"all": {"f1": None, "precision": 0.0, "recall": None, "specificity": 0.9}},
            "specificity": {"normal_only": True, "normal_tissue_in_polygons": 0.1, "lesion_sensitivity": None,
                            "f1_flag_everything": None, "warning": "n1: covers 80 %"},
        },
        "pooled/validation": {
            "pixel": {"mahalanobis_d2": {"auroc": 0.8}, "kde": {"auroc": 0.75}},
            "at_operating_point": {"all": {"f1": 0.3, "precision": 0.4, "recall": 0.3, "specificity": 0.95}},
            "specificity": {"normal_only_slides": ["n1"], "normal_tissue_in_polygons": 0.1,
                            "normal_tissue_in_polygons_all": 0.05, "lesion_sensitivity": 0.5,
                            "f1_flag_everything": 0.1, "warnings": ["n1: covers 80 %"]},
        },
    }  # fmt: skip
    table = tables.reading_table(metrics_, {"v1": "validation", "n1": "validation"}).set_index("slide")
    assert list(table.columns) == list(tables.READING_COLUMNS[1:]) and len(tables.READING_COLUMNS) == 13
    v1, n1, pooled = table.loc["v1"], table.loc["n1"], table.loc["pooled/validation"]
    assert (v1["split"], v1["F1"], v1["specificity"], v1["pixel AUROC, d²"]) == ("validation", 0.412, 0.98, 0.81)
    only = "normal tissue inside polygons, normal-only slides"
    assert v1["normal tissue inside polygons"] == 0.02 and pd.isna(v1[only])
    assert n1[only] == 0.1 and pd.isna(n1["F1"])
    assert n1["warning"] == "n1: covers 80 %" and pd.isna(n1["pixel AUROC, d²"])
    assert pooled["split"] == "validation (pooled)" and pooled["normal tissue inside polygons"] == 0.05
    assert pooled[only] == 0.1 and pooled["warning"] == "n1: covers 80 %"
    html = tables.page("Evaluation metrics", [("At the operating point", table.reset_index())])
    assert html.count('<th class="text">') == 13 and "0.412" in html
