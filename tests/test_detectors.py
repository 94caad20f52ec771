"""Several detectors in one run (config `detectors`): each entry merged over the top-level sections and validated
whole, errors naming the entry's key; without entries one detector, main, which is the top-level config; the
detector rules run once per detector with that detector's params, on paths under results/detectors/NAME/."""

import copy
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from proganomaly.config import MAIN, ConfigError, apply_overrides, detector_configs, validate_config
from proganomaly.layout import calibration_path, grid_path, slide_path

ROOT = Path(__file__).resolve().parents[1]
REDUCED = ROOT / "tests" / "config" / "config.yaml"
# Two detectors the reduced config's demo slides support: the test config's own, and one at half its resolution
# (16 px at 8 µm/px: 256 level-0 px of a 0.499 µm/px slide) with its own τ quantile.
TWO = {"detectors": {"fine": {}, "coarse": {"tiling": {"target_mpp": 8.0}, "calibration": {"normal_quantile": 0.995}}}}
DETECTOR_RULES = (
    "write_records",
    "train_reconstruction",
    "fit_error_distribution",
    "fit_threshold",
    "export_model",
    "infer_slide",
    "stitch_maps",
    "plot_qc",
    "plot_training",
    "plot_calibration",
)


def reduced(**extra) -> dict:
    """config/config.yaml with the reduced test config (and `extra`) merged over it, validated."""
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(raw, yaml.safe_load(REDUCED.read_text()))
    update_config(raw, extra)
    return validate_config(raw)


# ---------------------------------------------------------------------------------------------------- config
def test_no_detectors_is_one_detector_main_made_of_the_top_level():
    config = reduced()
    assert config["detectors"] == {}
    assert detector_configs(config) == {MAIN: config}


def test_each_detector_is_its_entry_merged_over_the_top_level():
    config = reduced(**TWO)
    detectors = detector_configs(config)
    assert list(detectors) == ["fine", "coarse"]  # the mapping's order
    fine, coarse = detectors["fine"], detectors["coarse"]
    assert fine == {**config, "detectors": {}}
    assert coarse["tiling"] == {**config["tiling"], "target_mpp": 8.0}  # one key replaced, its siblings kept
    assert coarse["calibration"] == {**config["calibration"], "normal_quantile": 0.995}
    assert coarse["model"] == config["model"] and coarse["stitching"] == config["stitching"]


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"model": {"latent_sise": 8}}, ["config key detectors.bad.model", "'latent_sise' was unexpected"]),
        ({"calibration": {"k_std": "x"}}, ["config key detectors.bad.calibration.k_std", "not of type 'number'"]),
        ({"model": {"filters": [[8, 8]]}}, ["detector bad", "model.filters has 1 entries"]),  # cross-key, merged
        ({"tiling": {"tissue": {"method": "otsu"}}}, ["detectors.bad.tiling.tissue", "once per slide"]),
        ({"stitching": {"map_mpp": 2.0}}, ["config key detectors.bad", "'stitching' was unexpected"]),  # shared
    ],
    ids=["unknown_key", "wrong_type", "cross_key", "shared_tiling_key", "shared_section"],
)
def test_a_wrong_detector_entry_names_its_key(entry, words):
    config = reduced()
    config["detectors"] = {"good": {}, "bad": entry}
    with pytest.raises(ConfigError) as info:
        validate_config(config)
        detector_configs(config)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_command_line_detector_values_get_their_schema_types():
    """`--config 'detectors={coarse: {tiling: {target_mpp: 8}}}'` hands over strings, typed as the top-level keys."""
    given = {"coarse": {"tiling": {"target_mpp": "8"}, "calibration": {"one_sided": "false", "scorer": "critic"}}}
    config = reduced()
    config["detectors"] = copy.deepcopy(given)
    apply_overrides(config, {"detectors": given})
    assert config["detectors"]["coarse"] == {
        "tiling": {"target_mpp": 8},
        "calibration": {"one_sided": False, "scorer": "critic"},
    }
    assert detector_configs(validate_config(config))["coarse"]["tiling"]["target_mpp"] == 8


@pytest.mark.parametrize("name", ["Fine", "2x", "a-b", "a.b"])
def test_detector_names_are_strict_ids(name):
    config = reduced()
    config["detectors"] = {name: {}}
    with pytest.raises(ConfigError, match="config key detectors"):
        validate_config(config)


# ---------------------------------------------------------------------------------------------------- the DAG
_DAG_JOBS = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

configs, targets = sys.argv[1].split(","), sys.argv[2:]
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow_api = api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(configfiles=[Path(c).resolve() for c in configs]),
        snakefile=Path(SNAKEFILE),
        workdir=Path.cwd(),
    )
    workflow_api.dag(DAGSettings(targets=set(targets), forceall=True))
    workflow = workflow_api._workflow
    workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
    workflow._build_dag()
    jobs = [
        {"rule": job.rule.name, "wildcards": dict(job.wildcards_dict), "params": dict(job.params.items()),
         "output": [str(f) for f in job.output], "input": [str(f) for f in job.input]}
        for job in workflow.dag.jobs
    ]
print("\nDAG_JOBS " + json.dumps(jobs, default=str))
"""


def planned(tmp_path: Path, extra: dict | None, targets: list[str]) -> list[dict]:
    """Every job (rule, wildcards, evaluated params, files) that building `targets` from nothing needs."""
    shutil.copytree(ROOT / "config", tmp_path / "config", dirs_exist_ok=True)
    configs = [ROOT / "config" / "config.yaml", REDUCED]
    if extra is not None:
        configs.append(tmp_path / "extra.yaml")
        configs[-1].write_text(yaml.safe_dump(extra, sort_keys=False))
    code = _DAG_JOBS.replace("SNAKEFILE", repr(str(ROOT / "workflow" / "Snakefile")))
    cmd = [sys.executable, "-c", code, ",".join(map(str, configs)), *targets]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(proc.stdout.split("\nDAG_JOBS ", 1)[1].splitlines()[0])


def detector_targets(names, slides=("demo_test", "demo_validation")) -> list[str]:
    """Each detector's maps of some slides, and its training, calibration and QC figures."""
    targets = []
    for d in names:
        targets += [f"results/detectors/{d}/slides/{s}/maps.json" for s in slides]
        targets += [f"results/report/{stage}/{d}/{f}" for stage, f in (("training", "losses.png"),
                    ("calibration", "d2_histogram.png"), ("qc", "slides.html"))]  # fmt: skip
    return targets


def test_two_detectors_train_calibrate_export_infer_and_stitch_each_with_its_own_params(tmp_path):
    jobs = planned(tmp_path, TWO, detector_targets(["fine", "coarse"]))
    counts = Counter((j["rule"], j["wildcards"].get("detector")) for j in jobs)
    for rule in DETECTOR_RULES:
        assert counts[(rule, "fine")] == counts[(rule, "coarse")] > 0, rule
    for rule in ("train_reconstruction", "fit_error_distribution", "fit_threshold", "export_model"):
        assert counts[(rule, "fine")] == 1, rule
    assert counts[("infer_slide", "fine")] == counts[("stitch_maps", "fine")] == 2
    # one tile_slide job per slide writes every detector's patch grid over one tissue mask
    tiling = [j for j in jobs if j["rule"] == "tile_slide"]
    assert len(tiling) == len({j["wildcards"]["slide"] for j in tiling}) == 10
    assert [g["target_mpp"] for g in tiling[0]["params"]["grids"]] == [4.0, 8.0]
    assert sum(f.startswith("results/detectors/fine/tiles/") for f in tiling[0]["output"]) == 2

    def params(rule, detector):
        return next(j["params"] for j in jobs if j["rule"] == rule and j["wildcards"]["detector"] == detector)

    assert params("export_model", "fine")["tiling"]["target_mpp"] == 4.0
    assert params("export_model", "coarse")["tiling"]["target_mpp"] == 8.0
    assert params("fit_threshold", "fine")["calibration"]["normal_quantile"] == 0.999
    assert params("fit_threshold", "coarse")["calibration"]["normal_quantile"] == 0.995
    assert params("train_reconstruction", "coarse") == params("train_reconstruction", "fine")
    # a detector reads only its own files
    for job in jobs:
        detector = job["wildcards"].get("detector")
        if detector:
            other = {"fine": "coarse", "coarse": "fine"}[detector]
            assert not any(f"/detectors/{other}/" in f for f in job["input"] + job["output"]), job


def test_one_detector_is_main_and_an_explicit_main_plans_the_same_jobs(tmp_path):
    """The single-detector run is the one-entry case: `detectors: {main: {}}` plans the very same jobs and params."""
    implicit = planned(tmp_path / "implicit", None, ["all"])
    explicit = planned(tmp_path / "explicit", {"detectors": {MAIN: {}}}, ["all"])

    def key(job):
        return job["rule"], json.dumps(job["wildcards"], sort_keys=True)

    assert sorted(map(key, implicit)) == sorted(map(key, explicit))
    by_key = {key(j): j for j in explicit}
    for job in implicit:
        other = by_key[key(job)]
        assert job["output"] == other["output"], job["rule"]
        params = {k: v for k, v in job["params"].items() if k != "detectors"}
        assert params == {k: v for k, v in other["params"].items() if k != "detectors"}, job["rule"]
    counts = Counter(j["rule"] for j in implicit)
    # the reduced demo cohort: 10 slides, 6 with records, 7 mapped; one model, calibration and export
    assert counts["tile_slide"] == 10 and counts["write_records"] == 6
    assert counts["infer_slide"] == counts["stitch_maps"] == 7
    for rule in ("train_reconstruction", "fit_error_distribution", "fit_threshold", "export_model", "plot_training"):
        assert counts[rule] == 1, rule
    assert all(j["wildcards"].get("detector", MAIN) == MAIN for j in implicit)
    # the evaluation reads the one detector's maps, and nothing for comparing detectors (there is one)
    evaluate = next(j for j in implicit if j["rule"] == "evaluate_slide")
    slide = evaluate["wildcards"]["slide"]
    maps = [slide_path(f, detector=MAIN, slide=slide) for f in
            ("maps/kde.tif", "maps/flags.tif", "maps/mahalanobis_d2.tif", "maps/anomaly_map.tif", "maps.json")]  # fmt: skip
    tiles = [grid_path(f, detector=MAIN, slide=slide) for f in ("patches.parquet", "qc.json")]
    assert evaluate["input"] == [*maps, *tiles, f"results/demo/{slide}.geojson"]
    assert not any(k.startswith("detector") for k in evaluate["params"])


def test_two_detectors_are_fused_before_anything_reads_the_maps(tmp_path):
    """The default targets with two detectors: one fit_fusion over the τ slides, one fuse_maps per mapped slide, and
    every reader of the final maps (evaluation, QuPath export, report) reads the fused ones, never a detector's."""
    jobs = planned(tmp_path, TWO, ["all"])
    by_rule = Counter(j["rule"] for j in jobs)
    stitched = {j["wildcards"]["slide"] for j in jobs if j["rule"] == "stitch_maps"}
    assert by_rule["fit_fusion"] == 1
    assert by_rule["fuse_maps"] == len(stitched) == by_rule["stitch_maps"] / 2
    fit = next(j for j in jobs if j["rule"] == "fit_fusion")
    assert fit["params"]["detector_names"] == ["fine", "coarse"]
    assert set(fit["params"]["tau_slides"]) == {"demo_validation", "demo_validation_labc", "demo_validation_normal"}
    # slide-major: each τ slide's detectors in DETECTOR_NAMES order
    assert [f.split("/")[2] for f in fit["input"] if f.endswith("mahalanobis_d2.tif")] == ["fine", "coarse"] * 3
    for rule in ("evaluate_slide", "export_predictions", "plot_slide", "plot_overlay"):
        readers = [j for j in jobs if j["rule"] == rule]
        assert readers, rule
        for job in readers:
            maps = [f for f in job["input"] if "/maps" in f or f.endswith("threshold.json")]
            if rule == "evaluate_slide":  # it also scores each detector alone, from what fuse_maps fuses
                slide = job["wildcards"]["slide"]
                own = [slide_path(f, detector=d, slide=slide) for f in ("maps/mahalanobis_d2.tif", "maps.json")
                       for d in ("fine", "coarse")]  # fmt: skip
                own += [calibration_path("threshold.json", detector=d) for d in ("fine", "coarse")]
                assert sorted(f for f in maps if f.startswith("results/detectors/")) == sorted(own)
                assert job["params"]["detector_names"] == ["fine", "coarse"]
                maps = [f for f in maps if f not in own]
            assert maps and not any(f.startswith("results/detectors/") for f in maps), (rule, maps)
    fuse = next(j for j in jobs if j["rule"] == "fuse_maps")
    assert "results/fusion/threshold.json" in fuse["input"]
    assert sum(f.endswith("maps.json") for f in fuse["input"]) == 2
