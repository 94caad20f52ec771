"""A 40000² synthetic slide through tiling, inference, stitching and evaluation; a 1000-slide sheet's dry run.

    .venv/bin/python tests/benchmarks/bench_scale.py [--size 40000] [--fraction 0.05] [--slides 1000] [--workdir DIR]
        [--dag-only]

The slide is made by bench_tiling_memory's generator (pyramidal JPEG TIFF, 0.25 µm/px, levels down to 1/32). Each
stage runs its rule's own script (tile_slide, infer_slide, stitch_maps, evaluate_slide) in a fresh subprocess, given
the `snakemake` object Snakemake would give it, and reports its wall seconds and peak RSS (getrusage ru_maxrss);
targets: every stage under 2 GB. The model is the anchor GANomaly at 64 px with narrow filters and random weights,
exported through proganomaly.detector.export.save_detector (the real serving code). Evaluation uses a few synthetic
annotation rectangles over the tissue. Then a sheet of `--slides` slides (empty placeholder files; 70 % train, 5 %
calibrate, 5 % validation, 20 % test, the test and validation ones annotated) is dry-run with `snakemake -n`, twice:
with short ids (s0000…) and with TCGA-like ids of ~60 characters (the length of real cohort ids matters wherever
Snakemake compiles a regex holding them). Target: under 30 s. Reported: wall seconds, the CPU seconds of the
snakemake process (steadier than wall on a machine shared with other jobs) and the load average around it.
`--dag-only` skips the slide stages. Prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

EVAL_OUTPUTS = {
    "grid": "grid.parquet",
    "csv": "grid.csv",
    "class_grid": "class_grid.parquet",
    "metrics": "metrics.json",
    "pixels": "pixels.parquet",
}
CONFIG = {
    "tiling": {"patch_size_px": 64, "target_mpp": 1.0, "stride_px": 64, "min_tissue_fraction": 0.5},
    "model": {
        "filters": [[16, 16]] * 5,
        "kernel_sizes": [[4, 3]] + [[3, 3]] * 4,
        "latent_size": 32,
        "unet_skips": [True] * 5,
    },
    "training": {"batch_sizes": [8] * 5, "phase_images": [8] * 5, "checkpoint_every_images": 8},
    "calibration": {"border_px": 0},
    "inference": {"batch_size": 32},
    "stitching": {"map_mpp": 4.0},
}

# Runs one rule script in this (fresh) process with the `snakemake` object Snakemake would give it.
CHILD = r"""
import json, resource, runpy, sys, time, types
sys.path.insert(0, {scripts!r})
spec = json.loads({spec!r})

class Names(dict):
    __getattr__ = dict.__getitem__

sm = types.SimpleNamespace(
    input=Names(spec["input"]), output=Names(spec["output"]), params=Names(spec["params"]),
    wildcards=Names(spec["wildcards"]), log=[spec["log"]], rule=spec["rule"], threads=1,
)
t0 = time.perf_counter()
runpy.run_path(spec["script"], init_globals={{"snakemake": sm}}, run_name="__bench__")
print(json.dumps({{"s": time.perf_counter() - t0,
                   "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

EXPORT = r"""
import dataclasses, json, resource, sys, time
sys.path.insert(0, {scripts!r})
import numpy as np
from proganomaly.config import Config, validate_config
from proganomaly.detector.export import save_detector
from proganomaly.model.architectures import build_networks
from proganomaly.model.io import TrainedModel
from proganomaly.scoring import make_scorer
t0 = time.perf_counter()
cfg = Config.from_dict(validate_config(json.loads({config!r})))
trained = TrainedModel(build_networks(cfg.model, cfg.tiling.patch_size_px, cfg.seed), cfg.tiling.patch_size_px)
gaussian = {{"mean": np.zeros(3), "precision": np.eye(3) * 10.0}}
save_detector(make_scorer("rgb_error", trained), gaussian, tau=5.0, path={path!r}, jit_compile=False)
print(json.dumps({{"s": time.perf_counter() - t0,
                   "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def child(code: str, cwd: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rule_script(work: Path, script: str, rule: str, params: dict, slide: str, **io) -> dict:
    spec = {
        "script": str(ROOT / "scripts" / script),
        "rule": rule,
        "input": io["input"],
        "output": io["output"],
        "params": params,
        "wildcards": {"slide": slide},
        "log": str(work / "logs" / f"{rule}.log"),
    }
    try:
        return child(CHILD.format(scripts=str(ROOT / "scripts"), spec=json.dumps(spec)), work)
    except RuntimeError as exc:
        raise RuntimeError(f"{rule} failed; its log {spec['log']}:\n{Path(spec['log']).read_text()[-4000:]}") from exc


def annotations(path: Path, patches_path: Path, n: int = 5) -> None:
    """A few rectangles, each around a run of tissue patches (level-0 px), as a QuPath GeoJSON."""
    import pandas as pd

    patches = pd.read_parquet(patches_path).sort_values(["y", "x"])
    features = []
    for i in range(n):
        p = patches.iloc[(i * len(patches)) // n]
        x0, y0, w = int(p.x), int(p.y), int(p.width)
        ring = [[x0, y0], [x0 + 3 * w, y0], [x0 + 3 * w, y0 + 2 * w], [x0, y0 + 2 * w], [x0, y0]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def slide_stages(work: Path, size: int, fraction: float, cfg: dict) -> tuple[list, dict]:
    from proganomaly.config import GRID_KEYS, config_params

    slide, sid = work / f"synthetic_{size}_{fraction:g}.tif", "bench"
    rows = []
    if not slide.exists():
        code = (
            f"import json, resource, sys, time; sys.path.insert(0, {str(HERE)!r}); sys.path.insert(0, "
            f"{str(ROOT / 'scripts')!r}); from bench_tiling_memory import write_slide; t = time.perf_counter(); "
            f"write_slide(__import__('pathlib').Path({str(slide)!r}), {size}, {fraction}); "
            "print(json.dumps({'s': time.perf_counter() - t, "
            "'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
        )
        rows.append(("make slide (benchmark input)", child(code, work)))
    t, s = work / "tiles", work / "slides" / sid
    tiles = {k: str(t / f"{sid}.{k}") for k in ("patches.parquet", "qc.json", "mask.png", "tissue.png", "stain.json")}
    grid = {k: cfg["tiling"][k] for k in GRID_KEYS}
    rows.append(
        (
            "tile_slide",
            rule_script(
                work,
                "tile_slide.py",
                "tile_slide",
                # one detector's patch grid (tile_slide writes one per detector)
                {**config_params(cfg, "tiling"), "grids": [grid], "mpp": None},
                sid,
                input={"slide": str(slide)},
                output={
                    "patches": [tiles["patches.parquet"]],
                    "qc": [tiles["qc.json"]],
                    "mask": tiles["mask.png"],
                    "tissue": tiles["tissue.png"],
                    "stain": tiles["stain.json"],
                },
            ),
        )
    )
    model = work / "saved_model"
    if not model.exists():
        code = EXPORT.format(scripts=str(ROOT / "scripts"), config=json.dumps(cfg), path=str(model))
        rows.append(("export (small model)", child(code, work)))
    infer_params = config_params(
        cfg,
        "inference",
        "stitching.map_mpp",
        "stitching.kde.method",
        "calibration.border_px",
        "resources.gpus.inference",
    )
    rows.append(
        (
            "infer_slide",
            rule_script(
                work,
                "infer_slide.py",
                "infer_slide",
                {**infer_params, "mpp": None},
                sid,
                input={"slide": str(slide), "patches": tiles["patches.parquet"], "model": str(model)},
                output={
                    "patches": str(s / "patches.parquet"),
                    "canvas": str(s / "canvas"),
                    "json": str(s / "inference.json"),
                },
            ),
        )
    )
    rows.append(
        (
            "stitch_maps",
            rule_script(
                work,
                "stitch_maps.py",
                "stitch_maps",
                config_params(cfg, "stitching"),
                sid,
                input={
                    "canvas": str(s / "canvas"),
                    "qc": tiles["qc.json"],
                    "tissue": tiles["tissue.png"],
                    "patches": str(s / "patches.parquet"),
                },
                output={
                    "maps": [str(s / "maps" / "kde.tif")],
                    "overviews": [str(s / "overview" / "kde.png")],
                    "json": str(s / "maps.json"),
                    "tiles": str(s / "tiles.geojson"),
                },
            ),
        )
    )
    # Passing whole sections: a rule script reads only its keys, and new keys need no change here.
    geojson = work / "annotations.geojson"
    annotations(geojson, Path(tiles["patches.parquet"]))
    e = work / "eval"
    rows.append(
        (
            "evaluate_slide",
            rule_script(
                work,
                "evaluate_slide.py",
                "evaluate_slide",
                config_params(cfg, "seed", "evaluation"),
                sid,
                input={
                    **{m: str(s / "maps" / f"{m}.tif") for m in ("kde", "mahalanobis_d2", "anomaly_map")},
                    "maps": str(s / "maps.json"),
                    "patches": tiles["patches.parquet"],
                    "qc": tiles["qc.json"],
                    "annotations": [str(geojson)],
                },
                output={n: str(e / f) for n, f in EVAL_OUTPUTS.items()},
            ),
        )
    )
    qc = json.loads(Path(tiles["qc.json"]).read_text())
    info = json.loads((s / "inference.json").read_text())
    return rows, {"qc": qc, "inference": info}


def slide_id(i: int, style: str, rng: random.Random) -> str:
    if style == "short":
        return f"s{i:04d}"
    # TCGA-like: project-site-patient-sample-portion-slide, then a UUID, as TCGA diagnostic slide file names
    site, patient = rng.randint(10, 99), rng.randint(1000, 9999)
    return f"TCGA-{site}-{patient}-01Z-00-DX1.{uuid.UUID(int=rng.getrandbits(128))}".upper()


def dag_seconds(work: Path, n: int, cfg_path: Path, style: str = "short") -> dict:
    """Wall and CPU seconds of `snakemake -n` over an n-slide sheet, the jobs it plans and the load around it."""
    dag = work / f"dag_{style}"
    shutil.rmtree(dag, ignore_errors=True)
    (dag / "slides").mkdir(parents=True)
    shutil.copytree(ROOT / "config", dag / "config")
    geojson = dag / "slides" / "annotations.geojson"
    geojson.write_text('{"type": "FeatureCollection", "features": []}\n')
    rng = random.Random(0)
    lines = ["slide_id\tpath\tmpp\tsplit\tannotations"]
    for i in range(n):
        split = "train" if i < 0.7 * n else "calibrate" if i < 0.75 * n else "validation" if i < 0.8 * n else "test"
        sid = slide_id(i, style, rng)
        path = dag / "slides" / f"{sid}.tif"
        path.touch()
        lines.append(f"{sid}\t{path}\t0.25\t{split}\t{geojson if split in ('validation', 'test') else ''}")
    sheet = dag / "config" / "cohort.tsv"
    sheet.write_text("\n".join(lines) + "\n")
    cmd = [SNAKEMAKE, "-s", str(ROOT / "workflow/Snakefile"), "--directory", str(dag), "--configfile", str(cfg_path)]
    cmd += ["--config", f"slides={sheet}", "-n", "--quiet", "rules", "--cores", "1"]
    load0, before = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-4000:])
    total = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("total")]
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"style": style, "wall_s": seconds, "cpu_s": cpu, "jobs": int(total[0]) if total else -1,
            "load": (load0, os.getloadavg()[0])}  # fmt: skip


def print_dag(runs: list[dict], n: int) -> None:
    print(f"\nsnakemake -n over {n} slides (target < 30 s), on {os.cpu_count()} CPUs")
    print("| slide ids | jobs planned | wall s | CPU s | load average before → after |")
    print("|---|---:|---:|---:|---|")
    for r in runs:
        ids = "s0000…" if r["style"] == "short" else "TCGA-like, ~60 chars"
        load = f"{r['load'][0]:.2f} → {r['load'][1]:.2f}"
        print(f"| {ids} | {r['jobs']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {load} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=40000)
    ap.add_argument("--fraction", type=float, default=0.05, help="tissue fraction of the synthetic slide")
    ap.add_argument("--slides", type=int, default=1000, help="slides in the dry-run sheet")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the slide and outputs here (default: temp)")
    ap.add_argument("--dag-only", action="store_true", help="only the dry runs of the sheet, no slide stages")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    from proganomaly.config import validate_config

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    cfg = validate_config(json.loads(json.dumps(CONFIG)))
    cfg_path = work / "bench_config.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    load = os.getloadavg()
    try:
        rows, info = ([], None) if args.dag_only else slide_stages(work, args.size, args.fraction, cfg)
        dag_runs = [dag_seconds(work, args.slides, cfg_path, style) for style in ("short", "tcga")]
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if info is not None:
        print_slide(args, rows, info, load)
    print_dag(dag_runs, args.slides)


def print_slide(args, rows: list, info: dict, load: tuple) -> None:
    qc, inf = info["qc"], info["inference"]
    mm2 = qc["tissue_fraction"] * (args.size * 0.25e-3) ** 2
    print(f"\nsynthetic {args.size}² px slide at 0.25 µm/px, tissue {qc['tissue_fraction']:.3f} = {mm2:.1f} mm², "
          f"{qc['patch_count']} patches of {qc['patch']['size_level0_px']} level-0 px → 64 px; maps "
          f"{inf['map_grid']['width_l0'] // inf['map_grid']['downsample']}² at downsample "
          f"{inf['map_grid']['downsample']}; load average at start {load[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    print("| stage | s | s per mm² tissue | peak RSS MB | < 2 GB |")
    print("|---|---:|---:|---:|---|")
    for name, r in rows:
        ok = "yes" if r["rss_mb"] < 2048 else "NO"
        print(f"| {name} | {r['s']:.1f} | {r['s'] / mm2:.2f} | {r['rss_mb']:.0f} | {ok} |")
    t = inf["timings"]
    print(f"\ninfer_slide timings (s): read {t['read_s']:.1f}, model waited on reads {t['wait_s']:.1f}, model "
          f"{t['model_s']:.1f}, write {t['write_s']:.1f}, model waited on writes {t['stall_s']:.1f} + "
          f"{t['drain_s']:.1f}, wall {t['wall_s']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
