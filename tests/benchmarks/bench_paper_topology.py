"""The paper's topology end to end on CPU: 1024-px patches, nine blocks, the paper's filters divided by 32.

    .venv/bin/python tests/benchmarks/bench_paper_topology.py [--work /tmp/proganomaly-bench-paper-topology]
        [--divide 32] [--slide-px 3072 2048] [--no-evaluation] [--fresh] [--out results/benchmarks]

Runs the real workflow (`snakemake --configfile config/config.yaml config/paper.yaml override.yaml --cores 2`) in
the work directory. The override keeps paper.yaml's topology (tiling.patch_size_px 1024 at level 0, nine blocks, its
kernels, latent size and U-Net skips) and divides every filter count of paper.yaml by `--divide` (at least 1:
[[16, 16]]×4, [8, 8], [4, 4], [2, 2], [1, 1], [1, 1] for 32), so that CPUs can train it. What only a GPU cohort needs
is made tiny: one global batch of 2 per phase (17 phases), calibration / held-out / inference batches of 2, a coarse
evaluation grid. There is no GPU here, so resources.gpus.* are 1 (the paper's 2 would make MirroredStrategy split
each batch over two CPU replicas) and training.precision is float32 (paper: float16, which CPUs run emulated).

The demo slides are too small for 1024-px patches (the largest is 1072 × 1488 px, the calibrate slide 284 px high),
so the benchmark writes its own cohort into the work directory: five synthetic pyramidal JPEG TIFFs (two train, one
calibrate, one validation, one test; `--slide-px` wide × high at 0.5 µm/px) of H&E-like texture (pink stroma, purple
nuclei, pale lumina) on glass, the validation and test slides with a brown DAB-like square annotated in QuPath
GeoJSON, and the slide sheet pointing at them.

Targets: train_reconstruction, fit_error_distribution, fit_threshold, export_model, infer_slide of the test slide and,
unless --no-evaluation, stitch_maps and the evaluation through the pooled test metrics. Afterwards it checks that
results/detectors/main/model/model.json describes nine blocks at 1024 px with the divided filters and that the exported
SavedModel's serving signature takes (None, 1024, 1024, 3) uint8 patches, prints per rule the wall seconds and peak
RSS (columns s and max_rss of Snakemake's benchmark TSVs, results/benchmarks/<rule>/; summed / maxed over a rule's
jobs), the held-out evaluation's configuration and rows, and writes the table to OUT/paper_topology.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

MPP = 0.5
PATCH = 1024
SPLITS = {"pt_train_a": "train", "pt_train_b": "train", "pt_calibrate": "calibrate",
          "pt_validation": "validation", "pt_test": "test"}  # fmt: skip
ANOMALY_PX = 640  # side of the pasted brown square in the validation and test slides
ORDER = ("tile_slide", "write_records", "train_reconstruction", "fit_error_distribution", "fit_threshold",
         "export_model", "infer_slide", "stitch_maps", "evaluate_slide", "choose_operating_point",
         "export_predictions", "pool_metrics")  # fmt: skip


def divided_filters(paper: dict, divide: int) -> list[list[int]]:
    """paper.yaml's model.filters, each count divided by `divide` (floor), at least 1."""
    return [[max(1, int(f) // divide) for f in block] for block in paper["model"]["filters"]]


def override(paper: dict, divide: int, sheet: Path, evaluation: bool) -> dict:
    """The config merged over config.yaml + paper.yaml: divided filters, tiny batches, one CPU "GPU", float32."""
    blocks = len(paper["model"]["filters"])
    batch = 2
    cfg = {
        "slides": str(sheet),
        "model": {"filters": divided_filters(paper, divide)},
        "training": {
            "batch_sizes": [batch] * blocks,
            "phase_images": [batch] * blocks,  # one step per phase: 17 phases, each traced once
            "checkpoint_every_images": None,
            "precision": "float32",
            "heldout_examples": 4,
            "heldout_batch_size": 2,  # the held-out chunk: compiled, streamed, after the phase-end checkpoint
            "sample_images": 2,
            "shuffle_buffer_mb": 64,
        },
        "calibration": {"batch_size": batch},
        "inference": {"batch_size": batch, "read_threads": 2},
        "resources": {"gpus": {"training": 1, "calibration": 1, "inference": 1}},
    }
    if evaluation:
        cfg["evaluation"] = {"thresholds": [0.0, 0.1, 0.2], "dilations": [1.0]}
    return cfg


def tissue_rgb(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """H&E-like uint8 RGB: pink stroma with slow eosin variation, purple nuclei, a few pale lumina."""
    from scipy import ndimage

    coarse = rng.random((h // 64 + 2, w // 64 + 2)).astype(np.float32)
    eosin = ndimage.zoom(coarse, 64, order=1)[:h, :w]
    nuclei = ndimage.gaussian_filter(rng.random((h, w)).astype(np.float32), 2.5)
    nuclei = nuclei > np.quantile(nuclei[::7, ::7], 0.9)
    lumen = ndimage.gaussian_filter(rng.random((h // 16, w // 16)).astype(np.float32), 2)
    lumen = ndimage.zoom(lumen > np.quantile(lumen, 0.97), 16, order=0)[:h, :w]
    stroma = np.array([232, 150, 190], np.float32) - 40 * eosin[..., None]
    rgb = np.where(nuclei[..., None], np.array([95, 60, 150], np.float32), stroma)
    rgb = np.where(lumen[..., None], np.array([240, 225, 235], np.float32), rgb)
    rgb += rng.normal(0, 6, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_cohort(work: Path, width: int, height: int, seed: int = 0) -> Path:
    """Five synthetic slides, the validation and test annotations and the sheet; returns the sheet's path."""
    from shapely.geometry import box

    from proganomaly.data.geojson import write_polygons
    from proganomaly.maps.pyramid import write_pyramid

    out = work / "slides"
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.ogrid[0:height, 0:width]
    # Tissue: an ellipse leaving glass in the corners, so tiling finds both.
    inside = ((yy - height / 2) / (0.49 * height)) ** 2 + ((xx - width / 2) / (0.52 * width)) ** 2 <= 1
    rows = []
    for i, (slide, split) in enumerate(SPLITS.items()):
        path = out / f"{slide}.tif"
        annotations = ""
        if not path.exists():
            rng = np.random.default_rng(seed + i)
            rgb = np.where(inside[..., None], tissue_rgb(height, width, rng), np.uint8(243))
            if split in ("validation", "test"):
                y0, x0 = height // 2 - ANOMALY_PX // 2, width // 3
                dab = np.array([150, 90, 30], np.float32) + rng.normal(0, 12, (ANOMALY_PX, ANOMALY_PX, 3))
                rgb[y0 : y0 + ANOMALY_PX, x0 : x0 + ANOMALY_PX] = np.clip(dab, 0, 255).astype(np.uint8)
                write_polygons(out / f"{slide}.geojson", [box(x0, y0, x0 + ANOMALY_PX, y0 + ANOMALY_PX)],
                               name="IHC tissue", slide_id=slide)  # fmt: skip
            write_pyramid(path, rgb, MPP, compression="jpeg", quality=90, subsampling=(1, 1))
        if split in ("validation", "test"):
            annotations = str(out / f"{slide}.geojson")
        rows.append({"slide_id": slide, "path": str(path), "mpp": "", "split": split, "annotations": annotations})
    sheet = work / "slides.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return sheet


def targets(evaluation: bool) -> list[str]:
    out = [
        "results/detectors/main/model/model.json",
        "results/detectors/main/calibration/error_distribution.json",
        "results/detectors/main/calibration/threshold.json",
        "results/detectors/main/export/saved_model",
        "results/detectors/main/slides/pt_test/patches.parquet",
    ]
    if evaluation:
        out += ["results/eval/pooled/test/metrics.json"]
    return out


def run_workflow(work: Path, override_path: Path, goals: list[str], log: Path, cores: int) -> float:
    cmd = [
        str(ROOT / ".venv" / "bin" / "snakemake"),
        "--snakefile", str(ROOT / "workflow" / "Snakefile"),
        "--directory", str(work),
        "--configfile", str(ROOT / "config" / "config.yaml"), str(ROOT / "config" / "paper.yaml"), str(override_path),
        "--cores", str(cores),
        *goals,
    ]  # fmt: skip
    start = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        sys.exit(f"workflow failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def rule_table(work: Path) -> list[dict]:
    """Per rule that ran: jobs, wall seconds (summed over its jobs), peak RSS in MB (the largest job's max_rss)."""
    rows = []
    bench = work / "results" / "benchmarks"
    names = sorted(p.name for p in bench.iterdir() if p.is_dir()) if bench.is_dir() else []
    for rule in sorted(names, key=lambda r: (ORDER.index(r) if r in ORDER else len(ORDER), r)):
        frames = [pd.read_csv(t, sep="\t") for t in sorted((bench / rule).glob("*.tsv"))]
        if not frames:
            continue
        df = pd.concat(frames)
        rss = pd.to_numeric(df["max_rss"], errors="coerce")
        rows.append({"rule": rule, "jobs": len(frames), "wall_s": round(float(df["s"].sum()), 1),
                     "max_job_s": round(float(df["s"].max()), 1),
                     "peak_rss_mb": round(float(rss.max()), 0) if rss.notna().any() else None})  # fmt: skip
    return rows


def check_topology(work: Path, filters: list[list[int]]) -> dict:
    """model.json: nine blocks at 1024 px with the divided filters; SavedModel: (None, 1024, 1024, 3) uint8 input."""
    from proganomaly.model.networks import num_blocks

    record = json.loads((work / "results" / "detectors" / "main" / "model" / "model.json").read_text())
    got = record["model"]["filters"]
    assert record["patch_size_px"] == PATCH, record["patch_size_px"]
    assert num_blocks(record["patch_size_px"]) == len(got) == 9, got
    assert got == filters, (got, filters)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    code = (
        "import json, sys, tensorflow as tf\n"
        "sig = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "spec = list(sig.structured_input_signature[1].values())[0]\n"
        "print(json.dumps({'shape': spec.shape.as_list(), 'dtype': spec.dtype.name}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(work / "results" / "detectors" / "main" / "export" / "saved_model")],
                          capture_output=True, text=True, env=env, check=True)  # fmt: skip
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served == {"shape": [None, PATCH, PATCH, 3], "dtype": "uint8"}, served
    return {"blocks": len(got), "patch_size_px": record["patch_size_px"], "filters": got, "saved_model_input": served}


def heldout_summary(work: Path, blocks: int, examples: int) -> dict:
    """The held-out log: one row before training and one per phase (2·blocks − 1), each over every held-out patch."""
    heldout = pd.read_csv(work / "results" / "detectors" / "main" / "model" / "heldout_error.csv")
    assert len(heldout) == 2 * blocks, f"{len(heldout)} held-out rows for {2 * blocks - 1} phases"
    assert (heldout["examples"] == examples).all(), heldout["examples"].tolist()
    last = heldout.iloc[-1]
    return {"rows": len(heldout), "examples": examples, "last_phase": last["phase"],
            "last_l1_full": float(last["l1_full"]), "last_l2_full": float(last["l2_full"])}  # fmt: skip


def pooled_test(work: Path) -> dict | None:
    """Pixel AUROC / AP of the pooled test slides (the pasted square against the synthetic tissue), a sanity check."""
    path = work / "results" / "eval" / "pooled" / "test" / "metrics.json"
    if not path.is_file():
        return None
    pixel = json.loads(path.read_text())["pixel"]
    return {k: {"auroc": v.get("auroc"), "ap": v.get("average_precision")} for k, v in pixel.items()
            if isinstance(v, dict) and "auroc" in v}  # fmt: skip


def held_out_patches(work: Path) -> int:
    """Patches of the calibrate slides (the held-out pool)."""
    return sum(len(pd.read_parquet(work / "results" / "detectors" / "main" / "tiles" / f"{s}.patches.parquet"))
               for s, split in SPLITS.items() if split == "calibrate")  # fmt: skip


def load_average() -> str:
    """The 1, 5 and 15 min load averages (the machine may be shared: timings are under that load)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/proganomaly-bench-paper-topology"))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    ap.add_argument("--divide", type=int, default=32, help="divide every filter count of paper.yaml by this")
    ap.add_argument(
        "--slide-px",
        type=int,
        nargs=2,
        default=[3072, 2048],
        metavar=("WIDTH", "HEIGHT"),
        help="size of the synthetic slides (existing ones are reused: add --fresh after changing it)",
    )
    ap.add_argument("--no-evaluation", action="store_true", help="stop at infer_slide (no stitching, no evaluation)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="delete the work directory first")
    args = ap.parse_args()
    evaluation = not args.no_evaluation
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)

    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    filters = divided_filters(paper, args.divide)
    load_before = load_average()
    t0 = time.perf_counter()
    sheet = write_cohort(args.work, *args.slide_px)
    cohort_s = time.perf_counter() - t0
    override_path = args.work / "override.yaml"
    override_path.write_text(yaml.safe_dump(override(paper, args.divide, sheet, evaluation), sort_keys=False))
    print(f"[bench] cohort {cohort_s:.1f} s; filters {filters}; running the workflow in {args.work}", flush=True)
    wall = run_workflow(args.work, override_path, targets(evaluation), args.work / "workflow.log", args.cores)
    load_after = load_average()

    topology = check_topology(args.work, filters)
    rows = rule_table(args.work)
    cfg = yaml.safe_load(override_path.read_text())
    heldout = heldout_summary(
        args.work, len(filters), min(cfg["training"]["heldout_examples"], held_out_patches(args.work))
    )
    metrics = pooled_test(args.work)
    print(f"\ntopology: {topology['blocks']} blocks, {topology['patch_size_px']} px, filters {topology['filters']}; "
          f"SavedModel input {topology['saved_model_input']}")  # fmt: skip
    print(
        f"held-out error: {heldout['rows']} rows (initial + every phase) of {heldout['examples']} patches, chunks of "
        f"{cfg['training']['heldout_batch_size']}; after {heldout['last_phase']}: L1 {heldout['last_l1_full']:.4f}"
    )
    if metrics:
        print("pooled test pixel AUROC: " + ", ".join(f"{k} {v['auroc']:.3f}" for k, v in metrics.items()))
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; workflow wall {wall:.0f} s\n")
    print("| rule | jobs | wall s | longest job s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['rule']} | {r['jobs']} | {r['wall_s']:.1f} | {r['max_job_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"divide": args.divide, "slide_px": args.slide_px, "mpp": MPP, "cores": args.cores,
              "workflow_wall_s": round(wall, 1), "cohort_s": round(cohort_s, 1), "load_before": load_before,
              "load_after": load_after, "override": cfg, "topology": topology,
              "heldout": heldout, "pooled_test_pixel": metrics, "rules": rows}  # fmt: skip
    (args.out / "paper_topology.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"\nwrote {args.out / 'paper_topology.json'}")


if __name__ == "__main__":
    main()
