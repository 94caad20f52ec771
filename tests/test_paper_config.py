"""config/paper.yaml: valid over the demo config, nothing of the demo leaks into it, and its DAG builds; the default
DAG writes records only for the splits that read them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from proganomaly.config import Config, check_cross_keys, validate_config

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
sys.path.insert(0, str(ROOT / "scripts"))
import estimate_cost  # noqa: E402


def leaves(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def test_paper_config_validates_and_passes_the_cross_key_checks():
    merged: dict = {}
    for name in ("config.yaml", "paper.yaml"):  # the order `snakemake --configfile config/paper.yaml` merges in
        update_config(merged, load(name))
    cfg = Config.from_dict(validate_config(merged))
    check_cross_keys(cfg)
    assert cfg.tiling.patch_size_px == 1024 and cfg.tiling.target_mpp is None
    assert len(cfg.model.filters) == 9 and cfg.model.filters[0] == [512, 512] and cfg.model.filters[-1] == [16, 16]
    assert cfg.model.latent_size == 512 and cfg.training.precision == "float16"
    assert [b // cfg.resources.gpus.training for b in cfg.training.batch_sizes] == [32, 16, 16, 16, 16, 4, 2, 2, 1]
    assert cfg.stitching.map_mpp == 4.0


def test_no_demo_setting_leaks_into_the_paper_config():
    """--configfile merges over config/config.yaml: every key the demo sets must be set again by paper.yaml."""
    assert leaves(load("config.yaml")) - leaves(load("paper.yaml")) == set()


def test_flop_count_of_the_paper_generator():
    cfg = estimate_cost.merged_configs(ROOT / "config/config.yaml", ROOT / "config/paper.yaml")["main"]
    flops = estimate_cost.network_flops(cfg.model, 8)
    # Block 8's two 3×3 convs at 1024² (skip-doubled 32 → 16, then 16 → 16) alone are 2·1024²·9·(64·16 + 16·16).
    assert flops["G"] > 2 * 1024**2 * 9 * (64 * 16 + 16 * 16)
    assert 1e11 < flops["G"] < 1e12 and flops["D"] < flops["G"]
    stages = estimate_cost.stage_flops(cfg, {"calibrate": 1, "threshold": 1, "test": 1})
    assert stages["infer_slide (all test slides)"] == flops["G"]


def dry_run(workdir: Path, *args: str) -> str:
    shutil.copytree(ROOT / "config", workdir / "config", dirs_exist_ok=True)
    cmd = [SNAKEMAKE, "-s", str(ROOT / "workflow/Snakefile"), "--directory", str(workdir), "-n", "--cores", "1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def jobs(out: str, rule: str) -> list[str]:
    """Wildcard lines of the planned jobs of `rule`."""
    return re.findall(rf"^rule {rule}:\n(?:    .*\n)*?    wildcards: (.*)$", out, flags=re.M)


@pytest.mark.parametrize("configfile", [None, "config/paper.yaml"])
def test_dag_builds_and_writes_records_only_for_the_splits_that_read_them(tmp_path, configfile):
    out = dry_run(tmp_path, *(["--configfile", configfile] if configfile else []))
    records = jobs(out, "write_records")
    assert sorted(records) == [f"detector=main, slide=demo_{s}" for s in ("calibrate", "train_a", "train_b",
                               "validation", "validation_labc", "validation_normal")]  # fmt: skip
    inferred = jobs(out, "infer_slide")
    for slide in ("demo_test", "demo_test_labd", "demo_test_normal", "demo_test_normal_labd"):
        assert f"detector=main, slide={slide}" in inferred  # test slides are still mapped, from the slide file
