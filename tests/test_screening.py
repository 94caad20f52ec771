"""Screening mode (`detector: PATH`): an exported detector screens new slides with no training or calibration job,
and a detector folder that does not fit the config or the sheet is refused when the workflow is parsed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.utils import update_config

from proganomaly.config import config_params, enum_of, validate_config
from proganomaly.detector.card import CARD_FILE, SAVED_MODEL_DIR, SCREENING_KEYS, CardError, check_detector, model_card
from proganomaly.maps.names import MAP_NAMES

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
REDUCED = ROOT / "tests" / "config" / "config.yaml"
TRAINING_JOBS = ("train_reconstruction", "fit_error_distribution", "fit_threshold", "write_records", "export_model")


def reduced_config() -> dict:
    """config/config.yaml with the reduced test config merged over it (as `--configfile` does), validated."""
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(raw, yaml.safe_load(REDUCED.read_text()))
    return validate_config(raw)


def threshold_record(config: dict) -> dict:
    """The τ record as fit_threshold writes it for `config`: with per-slide robust z, τ_z on z (a usual value)."""
    if config["calibration"]["slide_standardisation"] == "none":
        return {"method": "unsupervised"}
    return {"method": "quantile", "tau_z": 3.5, "slide_standardisation": {"method": "robust"}}


def card_for(config: dict, **extra) -> dict:
    """A model card as export_model writes it for `config` (statistics abridged: screening reads the settings)."""
    meta = {
        "architecture": "ganomaly", "scorer": config["calibration"]["scorer"],
        "patch_size_px": config["tiling"]["patch_size_px"], "input": {}, "outputs": [], "value_range": "",
        "jit_compile": False, "tau": 4.0,
    }  # fmt: skip
    card = model_card(
        config=config_params(config, "export", "scoring", *SCREENING_KEYS),
        metadata=meta,
        model_files={},
        manifests={},
        error_distribution={},
        threshold=threshold_record(config),
        slide_mpp=[0.499],
    )
    return card | extra


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(REDUCED), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)


def scratch(tmp_path: Path, slide: Path) -> Path:
    """A working directory with the demo config and a one-slide sheet (a test slide, no annotations)."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "screen.tsv").write_text(f"slide_id\tpath\tsplit\nnew_slide\t{slide}\ttest\n")
    return tmp_path


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """{rule: count} from the dry run's job stats table."""
    out, jobs = proc.stdout + proc.stderr, {}
    table = out[out.index("Job stats:") :].splitlines()[3:]
    for line in table:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


# ------------------------------------------------------------------------------------ refused at parse time
@pytest.fixture
def fake_detector(tmp_path):
    """A detector folder as screening sees it at parse time: saved_model/saved_model.pb and the model card."""
    folder = tmp_path / "detectors" / "cohort"
    (folder / SAVED_MODEL_DIR).mkdir(parents=True)
    (folder / SAVED_MODEL_DIR / "saved_model.pb").write_bytes(b"")
    (folder / CARD_FILE).write_text(json.dumps(card_for(reduced_config())))
    return folder


def edit_card(folder: Path, path: str, value) -> None:
    card = json.loads((folder / CARD_FILE).read_text())
    *parents, leaf = path.split(".")
    node = card
    for key in parents:
        node = node[key]
    node[leaf] = value
    (folder / CARD_FILE).write_text(json.dumps(card))


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (
            lambda f: edit_card(f, "config.tiling.patch_size_px", 32),
            ["config tiling.patch_size_px is 16", "says 32", "set tiling.patch_size_px: 32"],
        ),
        (
            lambda f: edit_card(f, "config.tiling.target_mpp", 2.0),
            ["config tiling.target_mpp is 4.0", "says 2.0", "set tiling.target_mpp: 2.0"],
        ),
        (
            lambda f: edit_card(f, "config.calibration.scorer", "rgb_eror"),
            ["calibration.scorer 'rgb_eror'", "this version does not know", "rgb_error"],
        ),
        (lambda f: shutil.rmtree(f / SAVED_MODEL_DIR), ["has no saved_model/saved_model.pb", "export_model"]),
        (lambda f: (f / CARD_FILE).unlink(), ["has no model_card.json", "export_model"]),
        (lambda f: (f / CARD_FILE).write_text("{not json"), ["model_card.json is not valid JSON", "re-export"]),
    ],
    ids=["patch_size", "mpp", "unknown_scorer", "no_saved_model", "no_card", "malformed_card"],
)
def test_mismatched_detector_is_refused_at_parse_time(tmp_path, demo_svs, fake_detector, damage, words):
    work = scratch(tmp_path / "work", demo_svs)
    damage(fake_detector)
    proc = snakemake(work, "-n", "--cores", "1", "--config", "slides=screen.tsv", f"detector={fake_detector}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for w in words:
        assert w in out, (w, out[-3000:])
    assert not (work / "results").exists()


def test_card_checks_name_the_key_and_the_fix(tmp_path, fake_detector):
    cfg = reduced_config()
    scorers = enum_of("calibration.scorer")
    assert check_detector(fake_detector, cfg, scorers)["tau"] == 4.0
    # the config's own values must agree too: a screening config that normalises stains differently
    other = json.loads(json.dumps(cfg))
    trained_with = cfg["stain"]["normalisation"]
    other["stain"]["normalisation"] = "reinhard" if trained_with != "reinhard" else "none"
    wrong = other["stain"]["normalisation"]
    with pytest.raises(CardError, match=rf"config stain.normalisation is '{wrong}' but .* says '{trained_with}'"):
        check_detector(fake_detector, other, scorers)
    # native resolution (target_mpp null): a sheet mpp unlike the training slides' is refused, theirs accepted
    native = json.loads(json.dumps(cfg))
    native["tiling"]["target_mpp"] = None
    edit_card(fake_detector, "config.tiling.target_mpp", None)
    check_detector(fake_detector, native, scorers, {"a": 0.499, "b": None})
    with pytest.raises(CardError, match=r"slide b has mpp 0.25 .* trained on slides at \[0.499\]"):
        check_detector(fake_detector, native, scorers, {"a": 0.499, "b": 0.25})
    # a card from before screening (no recorded settings) says to re-export
    card = json.loads((fake_detector / CARD_FILE).read_text())
    del card["config"]["stain"]
    (fake_detector / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CardError, match=r"does not record stain.normalisation .* re-export"):
        check_detector(fake_detector, native, scorers)


def test_detector_inside_results_is_refused(tmp_path, demo_svs, fake_detector):
    work = scratch(tmp_path / "work", demo_svs)
    shutil.copytree(fake_detector, work / "results" / "detectors" / "main" / "export")
    config = ["slides=screen.tsv", "detector=results/detectors/main/export"]
    proc = snakemake(work, "-n", "--cores", "1", "--config", *config)
    assert proc.returncode != 0
    assert "is inside results/" in proc.stdout + proc.stderr


def test_screening_with_several_detectors_is_refused(tmp_path, demo_svs, fake_detector):
    """The screened detector plays the one detector, main; screening beside named detectors is not built yet."""
    work = scratch(tmp_path / "work", demo_svs)
    config = ["slides=screen.tsv", f"detector={fake_detector}", "detectors={fine: {}, coarse: {}}"]
    proc = snakemake(work, "-n", "--cores", "1", "--config", *config)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "screening with several detectors is not built yet" in out and "fine, coarse" in out, out[-3000:]


# ------------------------------------------------------------------------------------ a screening run
@pytest.fixture(scope="module")
def exported_detector(tmp_path_factory):
    """A real detector for the reduced config (16 px, 4 µm/px): an untrained generator with its rgb_error Gaussian
    fitted on random patches, exported by save_detector with the card export_model writes. It never saw a slide."""
    import tensorflow as tf

    from proganomaly.calibration import errors, stats
    from proganomaly.config import Config
    from proganomaly.detector.export import save_detector
    from proganomaly.model import io
    from proganomaly.model.architectures import build_networks
    from proganomaly.scoring import make_scorer

    raw = reduced_config()
    cfg, size = Config.from_dict(raw), raw["tiling"]["patch_size_px"]
    model_dir, folder = tmp_path_factory.mktemp("model"), tmp_path_factory.mktemp("detectors") / "cohort"
    io.save_weights(build_networks(cfg.model, size, seed=3), model_dir / io.WEIGHTS)
    (model_dir / io.MODEL_JSON).write_text(json.dumps(io.model_record(cfg.model, size, 3)))
    trained = io.load_trained(model_dir)
    scorer = make_scorer("rgb_error", trained)
    patches = np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    moments, _ = errors.fit_error_distribution(
        scorer, tf.data.Dataset.from_tensor_slices(patches).batch(8), stats.linear_edges(0, 2, 16)
    )
    gauss = stats.gaussian_fit(moments)
    meta = save_detector(scorer, gauss, 3.0, folder / SAVED_MODEL_DIR)
    card = model_card(
        config=config_params(raw, "export", "scoring", *SCREENING_KEYS),
        metadata=meta,
        model_files={"generator_weights": model_dir / io.WEIGHTS, "model_json": model_dir / io.MODEL_JSON},
        manifests={},
        error_distribution={"scorer": "rgb_error", "mean": gauss["mean"].tolist()},
        threshold=threshold_record(raw),
        slide_mpp=[0.499],
    )
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder


@pytest.mark.slow
def test_screening_a_new_slide_maps_exports_and_plots_it_without_training(tmp_path, demo_svs, exported_detector):
    work = scratch(tmp_path, demo_svs)
    config = ["--config", "slides=screen.tsv", f"detector={exported_detector}"]
    dry = snakemake(work, "-n", "--cores", "1", *config)
    assert dry.returncode == 0, dry.stderr[-4000:]
    jobs = planned_jobs(dry)
    assert not set(jobs) & set(TRAINING_JOBS), jobs
    assert {"tile_slide", "infer_slide", "stitch_maps", "plot_overlay"} <= set(jobs), jobs

    slide = work / "results" / "detectors" / "main" / "slides" / "new_slide"  # the screened detector is main
    overlay = work / "results" / "report" / "overlays" / "new_slide.png"
    targets = [str(p.relative_to(work)) for p in (slide / "maps.json", slide / "tiles.geojson", overlay)]
    proc = snakemake(work, "--cores", "2", *targets, *config)  # --config takes every word after it
    assert proc.returncode == 0, proc.stderr[-6000:]

    detector = work / "results" / "detectors" / "main"
    assert not (detector / "model").exists() and not (detector / "calibration").exists()
    inference = json.loads((slide / "inference.json").read_text())
    assert Path(inference["saved_model"]) == exported_detector / SAVED_MODEL_DIR
    assert inference["patch_size_px"] == 16
    patches = pd.read_parquet(slide / "patches.parquet")
    assert len(patches) > 0
    for name in MAP_NAMES:
        assert (slide / "maps" / f"{name}.tif").is_file(), name
    tiles = json.loads((slide / "tiles.geojson").read_text())
    assert tiles["type"] == "FeatureCollection" and len(tiles["features"]) == len(patches)
    assert overlay.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
