"""The output layout (proganomaly.layout): every rule's paths come from one table, so its answers are the workflow's
file names. These pin the paths the rules, the docs and the Slurm profile rely on, and the layout's own guarantees."""

from pathlib import PurePosixPath

import pytest
from snakemake.io import expand

from proganomaly import layout
from proganomaly.layout import (
    DETECTOR_KINDS,
    LAYOUT,
    RESULTS,
    RUN_KINDS,
    bench_path,
    calibration_path,
    demo_path,
    eval_path,
    eval_set_path,
    export_path,
    fused_path,
    grid_path,
    log_path,
    manifest_path,
    model_path,
    operating_point_path,
    path,
    pooled_path,
    pooled_set,
    records_path,
    report_path,
    slide_path,
    tile_path,
)


def example(kind: str, **wildcards: str) -> str:
    """A kind's path with every wildcard (and {file}, where it has one) given."""
    file = "f.ext" if "{file}" in LAYOUT[kind] else None
    return path(kind, file, **{w: wildcards.get(w, "x") for w in layout.fields(LAYOUT[kind]) - {"file"}})


@pytest.mark.parametrize(
    ("got", "want"),
    [
        (demo_path("cohort.json"), "results/demo/cohort.json"),
        (tile_path("stain.json", slide="s1"), "results/tiles/s1.stain.json"),
        (grid_path("patches.parquet", slide="s1", detector="d"), "results/detectors/d/tiles/s1.patches.parquet"),
        (records_path(slide="s1", detector="d"), "results/detectors/d/records/s1"),
        (manifest_path(slide="s1", detector="d"), "results/detectors/d/records/s1.manifest.json"),
        (model_path("generator.weights.h5", detector="d"), "results/detectors/d/model/generator.weights.h5"),
        (calibration_path("threshold.json", detector="d"), "results/detectors/d/calibration/threshold.json"),
        (export_path("saved_model", detector="d"), "results/detectors/d/export/saved_model"),
        (slide_path("maps/kde.tif", slide="s1", detector="d"), "results/detectors/d/slides/s1/maps/kde.tif"),
        (fused_path("maps/kde.tif", slide="s1"), "results/slides/s1/maps/kde.tif"),
        (eval_path("grid.parquet", slide="s1"), "results/eval/s1/grid.parquet"),
        (pooled_path("metrics.json", split="test"), "results/eval/pooled/test/metrics.json"),
        (operating_point_path(), "results/eval/operating_point.json"),
        (report_path("qc/slides.html"), "results/report/qc/slides.html"),
        (log_path("infer_slide", "d/s1"), "results/logs/infer_slide/d/s1.log"),
        (bench_path("fit_threshold", "all"), "results/benchmarks/fit_threshold/all.tsv"),
    ],
)
def test_concrete_paths(got, want):
    assert got == want


def test_missing_wildcards_stay_for_snakemake():
    assert slide_path("maps.json") == "results/detectors/{detector}/slides/{slide}/maps.json"
    assert grid_path("qc.json") == "results/detectors/{detector}/tiles/{slide}.qc.json"
    assert manifest_path() == "results/detectors/{detector}/records/{slide}.manifest.json"
    assert fused_path("maps.json") == "results/slides/{slide}/maps.json"
    assert pooled_path("grid.csv") == "results/eval/pooled/{split}/grid.csv"
    assert log_path("tile_slide", "{slide}") == "results/logs/tile_slide/{slide}.log"
    assert bench_path("pool_metrics", "{split}") == "results/benchmarks/pool_metrics/{split}.tsv"
    assert eval_set_path("grid.parquet") == "results/eval/{evalset}/grid.parquet"
    # wildcards inside the file are filled like the template's own
    assert report_path("slides/{slide}.png", slide="s1") == "results/report/slides/s1.png"
    assert report_path("slides/{slide}.png") == "results/report/slides/{slide}.png"


def test_patterns_work_in_expand():
    """Filled by expand(), or left for the rule with allow_missing (no {{slide}} escapes needed)."""
    assert expand(manifest_path(detector="d"), slide=["a", "b"]) == [
        "results/detectors/d/records/a.manifest.json",
        "results/detectors/d/records/b.manifest.json",
    ]
    maps = expand(slide_path("maps/{name}.tif"), name=["kde", "flags"], allow_missing=True)
    assert maps == [
        "results/detectors/{detector}/slides/{slide}/maps/kde.tif",
        "results/detectors/{detector}/slides/{slide}/maps/flags.tif",
    ]
    assert expand(eval_path("{name}"), slide=["a"], name=["grid.csv"]) == ["results/eval/a/grid.csv"]


def test_a_pooled_split_is_an_eval_set():
    """The report reads slides and pooled splits alike (eval_set_path); a pooled split's eval set is its folder."""
    for file in ("grid.parquet", "metrics.json"):
        assert eval_set_path(file, pooled_set("test")) == pooled_path(file, split="test")
        assert eval_set_path(file, "s1") == eval_path(file, slide="s1")


@pytest.mark.parametrize("kind", sorted(LAYOUT))
def test_every_path_is_under_results(kind):
    for p in (example(kind), path(kind, "f.ext" if "{file}" in LAYOUT[kind] else None)):
        parts = PurePosixPath(p).parts
        assert parts[0] == RESULTS and len(parts) > 1 and ".." not in parts, p


@pytest.mark.parametrize("file", ["../escape.txt", "a/../../b", "/abs/path", ""])
def test_a_file_cannot_leave_its_folder(file):
    with pytest.raises(ValueError, match="relative path inside its folder"):
        slide_path(file)


@pytest.mark.parametrize(
    "wildcards",
    [
        {},
        {"slide": "a", "split": "a", "rule": "a", "evalset": "a", "detector": "a"},
        {"slide": "pooled", "split": "x"},
        {"slide": "detectors", "detector": "tiles"},
    ],
    ids=["unfilled", "same_values", "slide_named_pooled", "names_like_folders"],
)
def test_no_two_kinds_share_a_path(wildcards):
    paths = {}
    for kind in LAYOUT:
        file = "f.ext" if "{file}" in LAYOUT[kind] else None
        wanted = {w: v for w, v in wildcards.items() if w in layout.fields(LAYOUT[kind])}
        p = path(kind, file, **wanted)
        assert p not in paths, f"{kind} and {paths.get(p)} both give {p}"
        paths[p] = kind


def test_mistakes_are_refused():
    with pytest.raises(TypeError, match="no wildcard"):
        slide_path("maps.json", slid="s1")
    with pytest.raises(TypeError, match="needs file"):
        path("slide")
    with pytest.raises(TypeError, match="takes no file"):
        path("operating_point", "x.json")


def test_a_detector_owns_its_kinds():
    """Every detector kind, and no run kind, has a {detector} level: what differs between detectors (patch grid,
    records, model, calibration, export, per-slide maps) is apart per detector; the rest is the run's."""
    assert set(DETECTOR_KINDS) == {"grid", "records", "manifest", "model", "calibration", "export", "slide"}
    for kind, template in LAYOUT.items():
        assert (kind in DETECTOR_KINDS) == template.startswith("detectors/{detector}/"), kind
    assert model_path("model.json", detector="d1") == "results/detectors/d1/model/model.json"
    assert tile_path("mask.png") == "results/tiles/{slide}.mask.png"  # tissue is detected once per slide
    assert "fused" in RUN_KINDS
