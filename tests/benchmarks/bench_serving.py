"""Serving cost, measured: patches/s of each detector's served graph, and model seconds per mm² of tissue.

Detectors: those of --configfile merged over config/config.yaml, as `snakemake --configfile` merges them
(estimate_cost.merged_configs: each `detectors` entry over the top level; one detector `main` without them). Each one's
generator is built from its own typed config (architecture, filters, latent size, patch size) with random weights
(throughput does not depend on them) and exported with proganomaly.detector.export.save_detector as export_model does:
  SCORER, SCORER+xla    its calibration.scorer with its scoring settings (fitted when it needs_fit, e.g. the
                        critic's minibatch-stddev value, on up to 128 of the --slide's patches, else on uniform noise), a
                        Gaussian of its dimension (mean 0, identity precision, the scorer's one-sided directions) and
                        τ = the χ² 0.999 quantile of that dimension; export.jit_compile off, then on
  rgb_error(+xla)       the generator-only path (P-CEAD's scorer) on the same generator, for comparison
Each SavedModel is loaded back with load_detector and its serving signature timed at the detector's
inference.batch_size on uint8 patches of its size, every output copied to host: the median over timed calls after
two warm-up calls (bench_export.timed).

Per mm² of tissue: a detector's grid has one patch per stride cell, (1000 / (stride_px · mpp))² patches per mm²
(mpp: tiling.target_mpp, or the slide's own where it is null; --slide-mpp, default the demo slides' 0.499). The
"grid" column is the exact count of tile_slide's grid at that slide mpp (it rounds the stride to whole level-0 px,
tiling.level0_extent). Both are for tissue away from its border: there a patch is kept when tiling.min_tissue_fraction
of it is tissue, so a real slide's count per mm² is lower the larger the patch is against the tissue (--slide shows
it). The fused pipeline (only with several detectors) costs the sum of its detectors' model time, each at its
configured export.jit_compile, plus the per-pixel fusion: proganomaly.maps.fusion.detector_pvalues of every detector
(its slide's robust z, or raw d², against a normal-pixel histogram on fit_threshold's bin edges) and fused_score with
fusion.method, timed on 1 mm² of map at stitching.map_mpp. Not in the per-mm² figures: reading and stain-normalising
patches, stitching, the maps' pyramids and KDE. --slide SLIDE tiles a slide per detector as tile_slide does and runs
the real inference loop on it (proganomaly.maps.inference.run_inference with the inference settings, as infer_slide:
pyramid reads, stain normalisation and stitching into the canvases included; the comparison-only per-patch KDE not).

Run: .venv/bin/python tests/benchmarks/bench_serving.py [--configfile config/config.yaml] [--quick] [--slide SLIDE]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
from bench_export import timed
from bench_inference import _anchor
from scipy import stats as sps

from estimate_cost import merged_configs
from proganomaly.calibration import errors, stats, threshold
from proganomaly.data import stain, tiling
from proganomaly.detector.export import save_detector
from proganomaly.detector.load import load_detector
from proganomaly.maps import fusion, inference, stitching
from proganomaly.scoring import make_scorer

ROOT = Path(__file__).resolve().parents[2]
# The demo slides' level-0 resolution (tests/conftest.py): the mpp of a detector whose tiling.target_mpp is null.
DEMO_SLIDE_MPP = 0.499
# Patches the scorer's fit sees (the critic's minibatch-stddev value): a few batches are plenty for a throughput run.
FIT_PATCHES = 128
# Normal pixels in the fusion's reference histogram (fit_threshold pools millions; the histogram's size, not the
# pixel count, is what detector_pvalues pays for).
REFERENCE_PIXELS = 1_000_000


def load_detectors(configfile: str) -> dict:
    """{detector: typed config}, as the workflow builds them from config/config.yaml and --configfile."""
    return merged_configs(ROOT / "config/config.yaml", ROOT / configfile)


def detector_mpp(config, slide_mpp: float) -> float:
    """µm per patch pixel: tiling.target_mpp, or the slide's own resolution where it is null."""
    return config.tiling.target_mpp or slide_mpp


def patches_per_mm2(config, slide_mpp: float) -> tuple[float, float]:
    """(nominal (1000 / (stride_px · mpp))², the grid's count at the slide's mpp after tile_slide's rounding of the
    stride to whole level-0 px) patches per mm² of tissue."""
    t = config.tiling
    nominal = (1000.0 / (t.stride_px * detector_mpp(config, slide_mpp))) ** 2
    stride_l0 = tiling.level0_extent(t.stride_px, t.target_mpp, slide_mpp)
    return nominal, (1000.0 / (stride_l0 * slide_mpp)) ** 2


def configured_scorer(config):
    """The detector's calibration.scorer with its scoring settings, over its own generator (random weights)."""
    return make_scorer(config.calibration.scorer, _anchor(config, 1), settings=config.scoring)


def print_detectors(configs: dict, scorers: dict, slide_mpp: float, mpp_source: str) -> None:
    print(f"slide mpp {slide_mpp:g} ({mpp_source}); a null tiling.target_mpp tiles at it")
    print(
        f"{'detector':<10} {'px':>4} {'µm/px':>6} {'stride':>6} {'batch':>5} {'xla':>4} {'scorer':<12} {'channels':>8}"
    )
    for name, config in configs.items():
        t = config.tiling
        print(
            f"{name:<10} {t.patch_size_px:>4} {detector_mpp(config, slide_mpp):>6g} {t.stride_px:>6} "
            f"{config.inference.batch_size:>5} {'on' if config.export.jit_compile else 'off':>4} "
            f"{config.calibration.scorer:<12} {len(scorers[name].channels):>8}"
        )
    for name, scorer in scorers.items():
        print(f"{name} channels: {', '.join(scorer.channels)}")


def fit_patches(config, slide_patches: np.ndarray | None, rng) -> list[np.ndarray]:
    """Batches for a scorer's fit: the slide's patches when given (what calibration sees), else uniform noise."""
    size, batch = config.tiling.patch_size_px, config.inference.batch_size
    patches = slide_patches
    if patches is None:
        patches = rng.integers(0, 256, (FIT_PATCHES, size, size, 3), dtype=np.uint8)
    return [patches[i : i + batch] for i in range(0, len(patches), batch)]


def export_variants(config, scorer, fit: list[np.ndarray], workdir: Path) -> dict:
    """{variant: loaded Detector}: the configured scorer and rgb_error on the same generator, each exported without
    and with XLA."""
    scorers = [scorer]
    if scorer.name != "rgb_error":
        scorers.append(make_scorer("rgb_error", scorer.trained, settings=config.scoring))
    out = {}
    for s in scorers:
        if s.needs_fit:
            s.fit(fit)
        dim = len(s.channels)
        gaussian = {"mean": np.zeros(dim), "precision": np.eye(dim), "directions": list(s.directions)}
        tau = float(sps.chi2.ppf(0.999, dim))
        for jit in (False, True):
            variant = s.name + ("+xla" if jit else "")
            save_detector(s, gaussian, tau, workdir / variant, jit_compile=jit)
            out[variant] = load_detector(workdir / variant)
    return out


def serving_rates(variants: dict, config, min_calls: int, min_s: float) -> tuple[dict, dict]:
    """({variant: patches/s}, {variant: seconds of its first call}) at the detector's inference batch size, all
    outputs fetched to host. The first call traces and, with XLA, compiles: every infer_slide job pays it once."""
    size, batch = config.tiling.patch_size_px, config.inference.batch_size
    u8 = np.random.default_rng(1).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    feed = {"patches": tf.constant(u8)}
    rates, first = {}, {}
    for name, det in variants.items():
        start = time.perf_counter()
        {k: v.numpy() for k, v in det.function(**feed).items()}
        first[name] = time.perf_counter() - start
        rates[name] = timed(det.function, feed, min_calls, min_s)
    return rates, first


def xla_agreement(variants: dict, config) -> dict[str, float]:
    """max |plain − xla| / max |plain| of d² per scorer: the XLA export must serve the same numbers."""
    size = config.tiling.patch_size_px
    u8 = np.random.default_rng(2).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    out = {}
    for name in [v for v in variants if not v.endswith("+xla")]:
        a = variants[name](u8)["mahalanobis_d2"].astype(np.float64)
        b = variants[f"{name}+xla"](u8)["mahalanobis_d2"]
        out[name] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
    return out


def configured_variant(config) -> str:
    return config.calibration.scorer + ("+xla" if config.export.jit_compile else "")


def normal_threshold(config, dim: int, rng) -> dict:
    """A threshold.json's reference histogram of normal pixels, on fit_threshold's own bin edges: d² of a Gaussian of
    `dim` channels (χ²), or its robust z when the detector standardises per slide."""
    d2 = rng.chisquare(dim, REFERENCE_PIXELS)
    per_decade = config.calibration.d2_bins_per_decade
    if config.calibration.slide_standardisation != "robust":
        edges = stats.log_edges(*errors.D2_RANGE, per_decade)
        return {"d2_histogram_normal": stats.histogram_record(stats.bin_counts(d2, edges), edges)}
    z = (d2 - np.median(d2)) / robust_scale(d2)
    zedges = threshold.z_edges(per_decade)
    return {
        "slide_standardisation": {"z_histogram_normal": stats.histogram_record(stats.bin_counts(z, zedges), zedges)}
    }


def robust_scale(values: np.ndarray) -> float:
    return threshold.MAD_SCALE * float(np.median(np.abs(values - np.median(values))))


def slide_standardisation(config, d2: np.ndarray) -> dict:
    """The maps.json record of a slide with this d² map (median and MAD_SCALE · MAD of its pixels)."""
    if config.calibration.slide_standardisation != "robust":
        return {"method": "none"}
    return {"method": "robust", "median": float(np.median(d2)), "scale": robust_scale(d2)}


def fusion_seconds(configs: dict, dims: dict[str, int], map_px: int, method: str, repeats: int) -> dict[str, float]:
    """Median seconds of each detector's detector_pvalues and of fused_score on a map_px × map_px tissue map."""
    rng = np.random.default_rng(3)
    inputs = {}
    for name, config in configs.items():
        d2 = rng.chisquare(dims[name], (map_px, map_px))
        inputs[name] = (d2, slide_standardisation(config, d2), normal_threshold(config, dims[name], rng))
    times: dict[str, list[float]] = {name: [] for name in [*configs, "fused_score"]}
    for _ in range(repeats):
        pvalues = []
        for name, args in inputs.items():
            t0 = time.perf_counter()
            pvalues.append(fusion.detector_pvalues(*args))
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fusion.fused_score(pvalues, method)
        times["fused_score"].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


# ------------------------------------------------------------------------------------------------ --slide


def tile_detectors(slide, configs: dict) -> dict:
    """{detector: TilingResult} as tile_slide makes them: tissue detected once, each detector's grid over it."""
    out = {}
    for name, config in configs.items():
        out[name] = tiling.tile_slide(slide, "bench", config.tiling, tissue_of=next(iter(out.values()), None))
    return out


def tissue_mm2(slide, result) -> float:
    width, height = slide.dimensions
    return result.qc["tissue_fraction"] * width * height * slide.mpp**2 / 1e6


def slide_reader(config, result):
    """read_patch as infer_slide calls it: from the pyramid when configured, then the slide's stain normalisation
    (estimated from the tissue thumbnail as tile_slide estimates it)."""
    from proganomaly.data.slide import read_patch

    read = functools.partial(read_patch, from_pyramid=config.inference.read_from_pyramid)
    method = config.stain.normalisation
    if method == "none":
        return read
    params = stain.estimate(result.thumbnail, result.mask)
    return lambda *args, **kwargs: stain.normalise(read(*args, **kwargs), params, method)


def read_fit_patches(slide, table, config, read) -> np.ndarray:
    """The first FIT_PATCHES patches of the detector's grid, read as inference reads them."""
    rows = table.head(FIT_PATCHES)
    size = config.tiling.patch_size_px
    return np.stack([read(slide, int(r.x), int(r.y), int(r.width), size) for r in rows.itertuples()])


def slide_run(slide, table, detector, config, read, workdir: Path, repeats: int) -> dict[str, float]:
    """Median timings of run_inference over the slide's patches, with the config's inference settings."""
    inf = config.inference
    ds = stitching.map_downsample(config.stitching.map_mpp, float(slide.mpp))
    grid = stitching.MapGrid(*slide.dimensions, ds, float(slide.mpp))
    # The last batch's shape is traced (and XLA-compiled) once per process, untimed like bench_inference's first call.
    s = detector.patch_size_px
    detector(np.zeros((len(table) % inf.batch_size or inf.batch_size, s, s, 3), np.uint8))
    runs = []
    for _ in range(repeats):
        canvas = stitching.create_canvas(workdir / "canvas", grid, inference.CANVAS_MAPS)
        _, t = inference.run_inference(
            slide, table, detector, canvas, slide_id="bench", batch_size=inf.batch_size,
            prefetch_batches=inf.prefetch_batches, read_patch=read, border_px=config.calibration.border_px,
            read_threads=inf.read_threads, write_queue_batches=inf.write_queue_batches,
        )  # fmt: skip
        runs.append(t)
    return {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "read_s", "wait_s", "model_s", "write_s")}


# ------------------------------------------------------------------------------------------------ report


def bench_detector(name, config, scorer, slide_mpp: float, timing: tuple, workdir: Path, slide=None, tiled=None):
    """Export, time and print one detector's variants; with a slide, also run its inference loop on it.

    Returns ({variant: patches/s}, (patches, run_inference timings) or None without a slide)."""
    min_calls, min_s, repeats = timing
    read = slide_reader(config, tiled) if slide else None
    real = read_fit_patches(slide, tiled.patches, config, read) if slide else None
    fit = fit_patches(config, real, np.random.default_rng(0))
    variants = export_variants(config, scorer, fit, workdir)
    rates, first = serving_rates(variants, config, min_calls, min_s)
    per_mm2 = patches_per_mm2(config, slide_mpp)[1]
    for variant, rate in rates.items():
        print(
            f"{name:<10} {variant:<20} {rate:>10.1f} {per_mm2 / rate:>9.3f} {3600 * rate / per_mm2:>9.1f}"
            f" {first[variant]:>8.1f}"
        )
    if scorer.needs_fit:
        print(f"{'':<10} {scorer.name} fitted on {sum(map(len, fit))} {'slide' if slide else 'noise'} patches")
    print(f"{'':<10} max |plain − xla| / max |plain| of d²: {xla_agreement(variants, config)}", flush=True)
    if slide is None:
        return rates, None
    timings = slide_run(slide, tiled.patches, variants[configured_variant(config)], config, read, workdir, repeats)
    return rates, (len(tiled.patches), timings)


def per_mm2_line(label: str, seconds: float) -> str:
    return f"{label:<34} {seconds:>9.3f} s/mm² {3600 / seconds:>9.1f} mm²/h"


def print_per_mm2(configs: dict, scorers: dict, rates: dict, slide_mpp: float, repeats: int) -> None:
    """Model seconds per mm² of tissue of each detector and, with several, of the fused pipeline."""
    print("\nper mm² of tissue (each detector at its configured export.jit_compile)")
    print(f"{'detector':<10} {'patches/mm² nominal':>20} {'grid':>9}  variant")
    model_s = {}
    for name, config in configs.items():
        nominal, grid = patches_per_mm2(config, slide_mpp)
        variant = configured_variant(config)
        model_s[name] = grid / rates[name][variant]
        print(f"{name:<10} {nominal:>20.1f} {grid:>9.1f}  {variant}")
    for name, seconds in model_s.items():
        print(per_mm2_line(f"model time, {name}", seconds))
    if len(configs) == 1:
        print("one detector: no fusion stage (the workflow fuses only with several detectors)")
        return
    first = next(iter(configs.values()))
    ds = stitching.map_downsample(first.stitching.map_mpp, slide_mpp)
    map_px = round(1000.0 / (ds * slide_mpp))
    dims = {name: len(scorer.channels) for name, scorer in scorers.items()}
    fused = fusion_seconds(configs, dims, map_px, first.fusion.method, repeats)
    print(f"fusion of 1 mm² of map ({map_px}² px at {ds * slide_mpp:g} µm/px), median of {repeats}: "
          + ", ".join(f"{k} {v:.3f} s" for k, v in fused.items()))  # fmt: skip
    total, fusion_s = sum(model_s.values()), sum(fused.values())
    print(per_mm2_line("model time, all detectors", total))
    print(per_mm2_line(f"fusion ({first.fusion.method})", fusion_s))
    print(per_mm2_line("fused pipeline (model + fusion)", total + fusion_s))


def print_slide_runs(slide, tiled: dict, runs: dict, repeats: int) -> None:
    print(f"\n--slide {slide.path} {slide.dimensions} at {slide.mpp:g} µm/px: run_inference, median of {repeats}")
    print(f"{'detector':<10} {'patches':>7} {'tissue mm²':>10} {'patch/mm²':>9} {'wall s':>7} {'patch/s':>8} "
          f"{'read s':>7} {'wait s':>7} {'model s':>7} {'write s':>7} {'s/mm²':>7}")  # fmt: skip
    for name, (n, m) in runs.items():
        area = tissue_mm2(slide, tiled[name])
        print(f"{name:<10} {n:>7} {area:>10.3f} {n / area:>9.1f} {m['wall_s']:>7.2f} {n / m['wall_s']:>8.1f} "
              f"{m['read_s']:>7.2f} {m['wait_s']:>7.2f} {m['model_s']:>7.2f} {m['write_s']:>7.2f} "
              f"{m['wall_s'] / area:>7.2f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configfile", default="config/config.yaml", help="merged over config/config.yaml, as snakemake")
    ap.add_argument("--quick", action="store_true", help="fewer and shorter timed calls")
    ap.add_argument("--slide", help="a slide to tile and run the real inference loop on (reading and writing included)")
    ap.add_argument("--slide-mpp", type=float, help=f"level-0 µm/px (default: the --slide's, else {DEMO_SLIDE_MPP})")
    args = ap.parse_args()
    timing = (3, 1.0, 1) if args.quick else (7, 3.0, 3)
    configs = load_detectors(args.configfile)
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print(f"tensorflow {tf.__version__}, devices {devices}, {os.cpu_count()} CPUs")
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
    print(f"config: {args.configfile} (merged over config/config.yaml); detectors {list(configs)}")
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        slide = tiled = None
        if args.slide:
            from proganomaly.data.slide import open_slide

            slide = stack.enter_context(open_slide(args.slide, mpp=args.slide_mpp))
            tiled = tile_detectors(slide, configs)
        slide_mpp = float(slide.mpp) if slide else (args.slide_mpp or DEMO_SLIDE_MPP)
        source = args.slide if slide else ("--slide-mpp" if args.slide_mpp else "the demo slides'")
        scorers = {name: configured_scorer(config) for name, config in configs.items()}
        print_detectors(configs, scorers, slide_mpp, source)
        print(f"\n{'detector':<10} {'variant':<20} {'patches/s':>10} {'s/mm²':>9} {'mm²/h':>9} {'first s':>8}   (median "
              f"of ≥{timing[0]} calls and ≥{timing[1]:g} s at inference.batch_size, all outputs to host; first s: "
              "the first call, trace and XLA compile)")  # fmt: skip
        rates, runs = {}, {}
        for name, config in configs.items():
            rates[name], runs[name] = bench_detector(
                name, config, scorers[name], slide_mpp, timing, Path(tmp) / name, slide, tiled and tiled[name]
            )
        print_per_mm2(configs, scorers, rates, slide_mpp, 3 if args.quick else 7)
        if slide:
            print_slide_runs(slide, tiled, runs, timing[2])
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
