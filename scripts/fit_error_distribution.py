"""Rule fit_error_distribution: the Gaussian of the scorer's per-pixel features on the calibrate slides.

Every pixel of every calibrate patch is one observation of the features e of `calibration.scorer` (for rgb_error
e = |x − G(x)|, x in [-1, 1], inference mode). The scorer's own state (if it fits one), its `scoring` settings, the
mean, the covariance (`calibration.covariance`: the exact sample covariance, or its correlation shrunk towards the
identity by OAS / Ledoit-Wolf estimated on one feature row per patch; plus the scorer's ridge), its inverse and
Cholesky factors, the shrinkage α, the per-channel anomaly directions d² clips with (`calibration.one_sided`) and
any warnings go to results/detectors/{detector}/calibration/error_distribution.json together with per-channel histograms and quantiles
of e (for the report) and provenance.

With `stain.calibration_copies` = K > 0 the calibrate patches are streamed K more times, each copy under per-patch
appearance draws of `stain.calibration_jitter` (seeded by the master seed and the copy index), into the same
moments, histograms and shrinkage rows; the scorer's own state stays fitted on the patches as they are.

With `resources.gpus.calibration` > 1 every batch of `calibration.batch_size` patches is split over that many GPUs
(MirroredStrategy, the model's weights mirrored on each); the per-GPU moments are merged exactly on the host.
"""

import dataclasses
import math
from pathlib import Path

import numpy as np

from proganomaly.calibration import errors, stats
from proganomaly.common.devices import replica_strategy, scope
from proganomaly.common.runlog import Progress, provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.data.records import count_examples, make_dataset
from proganomaly.model.io import load_trained
from proganomaly.scoring import make_scorer

log = setup_logging(snakemake.log[0])
cfg = from_params(snakemake.params, snakemake.rule)
manifests = list(snakemake.input.manifests)
if not manifests:
    raise SystemExit("no slide of split 'calibrate' in the slide sheet: add one (config/slides.tsv) to fit the errors")
model_dir = Path(snakemake.input.model_json).parent
strategy = replica_strategy(cfg.resources.gpus.calibration, "resources.gpus.calibration")
with scope(strategy):  # weights mirrored on every GPU
    trained = load_trained(model_dir)
    scorer = make_scorer(cfg.calibration.scorer, trained, settings=cfg.scoring)
size = int(trained.patch_size_px)
n_patches = count_examples(manifests, size)  # also fails early, naming the manifest, when a resolution is missing
if n_patches == 0:
    raise SystemExit(f"the calibrate slides {manifests} have no tissue patches; check their tiling QC")
batch = cfg.calibration.batch_size
copies = int(cfg.stain.calibration_copies)
jitter = dataclasses.asdict(cfg.stain.calibration_jitter)
if copies:
    log.info("calibration under appearance augmentation: %d jittered copies of every patch, ranges %s", copies, jitter)
log.info("%s model (%d px) over %d calibrate patches in batches of %d on %s", trained.architecture, size, n_patches,
         batch, f"{strategy.num_replicas_in_sync} GPUs" if strategy else "one device")  # fmt: skip

edges = stats.linear_edges(*scorer.histogram_range, cfg.calibration.error_histogram_bins)
progress = Progress((copies + 1) * math.ceil(n_patches / batch), "fit_error_distribution", "batches", logger=log)
moments, counts, rows = errors.fit_error_distribution(
    scorer,
    make_dataset(manifests, size, batch_size=batch),
    edges,
    strategy=strategy,
    progress=progress,
    jit_compile=cfg.calibration.jit_compile,
    border_px=cfg.calibration.border_px,
    with_rows=True,
    copies=copies,
    jitter=jitter,
    seed=cfg.seed,
)
inner = size - 2 * cfg.calibration.border_px
n_seen = (copies + 1) * n_patches
if moments.n != n_seen * inner * inner or len(rows) != n_seen:
    raise SystemExit(
        f"saw {moments.n} pixels in {len(rows)} patches, expected ({copies} + 1)·{n_patches} patches of {inner}² from "
        "the manifests (stain.calibration_copies + 1 passes): records are stale"
    )
kind = cfg.calibration.covariance
gauss = stats.gaussian_fit(moments, ridge=scorer.ridge, rows=rows, kind=kind)
shrinkage = gauss["shrinkage"]
log.info("mean %s, covariance diagonal %s", np.round(gauss["mean"], 5), np.round(np.diag(gauss["covariance"]), 6))
log.info("covariance %s: shrinkage α = %.4g from %d patch rows (%.1f per dimension)", kind, shrinkage["alpha"],
         shrinkage["n_rows"], shrinkage["rows_per_dimension"])  # fmt: skip
warnings = [w for w in [stats.sample_size_warning(n_patches, moments.dim)] if w]
for w in warnings:
    log.warning(w)
one_sided = bool(cfg.calibration.one_sided)
directions = list(scorer.directions) if one_sided else [0] * len(scorer.channels)
log.info("d² one-sided: %s; directions %s", one_sided, dict(zip(scorer.channels, scorer.directions, strict=True)))

write_json(
    snakemake.output.json,
    {
        "definition": scorer.definition,
        "scorer": scorer.name,
        "scorer_state": scorer.state,
        "scorer_settings": scorer.settings,
        "architecture": trained.architecture,
        "patch_size_px": size,
        "n_patches": n_patches,
        "n_patches_seen": n_seen,
        "n_pixels": moments.n,
        "augmentation": {
            "copies": copies,
            "jitter": jitter if copies else None,
            "seed": cfg.seed,
            "n_patches_seen": n_seen,
            "rule": "copy 0: the patches as read; copy k >= 1: every patch under its own appearance, uniform draws of "
            "the jitter ranges from numpy default_rng([augment.DRAW_KEY, seed, k]) (augment.appearance_draws), "
            "applied to the uint8 patch before the scorer (augment.apply_appearance); the scorer's state is fitted on "
            "copy 0 only",
        },
        "channels": list(scorer.channels),
        "mean": gauss["mean"],
        "covariance": gauss["covariance"],
        "covariance_kind": kind,
        "covariance_estimate": (
            "sample (ddof = 1), float64 Chan merges over batches"
            if kind == "sample"
            else f"D ((1 - alpha) R + alpha I) D: R, D the exact sample correlation and standard deviations (float64 "
            f"Chan merges), alpha = sklearn {kind} on one seeded interior pixel's features per patch, standardised"
        ),
        "shrinkage": shrinkage,
        "covariance_ridge": scorer.ridge,
        "one_sided": one_sided,
        "channel_directions": list(scorer.directions),
        "directions": directions,
        "directions_rule": "d2 = y^T precision y with y = e - mean, y_j clipped to >= 0 where directions_j = +1 and to "
        "<= 0 where it is -1 (unclipped where 0)",
        "warnings": warnings,
        "precision": gauss["precision"],
        "cholesky": gauss["cholesky"],
        "precision_cholesky": gauss["precision_cholesky"],
        "histograms": {ch: stats.histogram_record(counts[i], edges) for i, ch in enumerate(scorer.channels)},
        "provenance": provenance(
            cfg.to_dict(),
            inputs={"model_dir": str(model_dir), "manifests": manifests},
        ),
    },
)
log.info("wrote %s", snakemake.output.json)
