"""Rule export_model: one self-contained SavedModel (μ, Σ⁻¹, the one-sided directions and τ baked in; all read
from error_distribution.json and threshold.json) and its JSON model card. The card's "config" holds the rule's params,
among them the keys a screening run must match (proganomaly.detector.card.SCREENING_KEYS); together the two are the
detector folder that `detector: PATH` screens new slides with."""

import json
from pathlib import Path

from proganomaly.common.runlog import provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.detector.card import model_card
from proganomaly.detector.export import save_detector
from proganomaly.detector.load import load_detector
from proganomaly.model.io import load_trained
from proganomaly.scoring import check_scorer, scorer_from_record

log = setup_logging(snakemake.log[0])
cfg = from_params(snakemake.params, snakemake.rule)
ed = json.loads(Path(snakemake.input.error_distribution).read_text())
th = json.loads(Path(snakemake.input.threshold).read_text())
trained = load_trained(Path(snakemake.input.model_json).parent)
if int(trained.patch_size_px) != ed["patch_size_px"]:
    raise SystemExit(
        f"{snakemake.input.error_distribution} is for {ed['patch_size_px']} px; the model is {trained.patch_size_px} px"
    )

check_scorer(ed.get("scorer"), th.get("scorer"), snakemake.input.threshold)  # τ is on this Gaussian's d²
if th.get("directions") != ed.get("directions"):
    raise SystemExit(
        f"{snakemake.input.threshold} was fitted on d² with directions {th.get('directions')}, but "
        f"{snakemake.input.error_distribution} has {ed.get('directions')}: rerun fit_threshold"
    )
scorer = scorer_from_record(
    ed, trained, expected=th["scorer"], source=snakemake.input.error_distribution, settings=cfg.scoring
)
meta = save_detector(scorer, ed, th["tau"], snakemake.output.saved_model, jit_compile=cfg.export.jit_compile)
detector = load_detector(snakemake.output.saved_model)  # fails here, not in inference, if it does not load
log.info(
    "exported %s: %d px, outputs %s, τ = %.6g, d² directions %s",
    trained.architecture,
    detector.patch_size_px,
    detector.outputs,
    meta["tau"],
    meta["directions"],
)

card = model_card(
    config=cfg.to_dict(),
    metadata=meta,
    model_files={"generator_weights": snakemake.input.weights, "model_json": snakemake.input.model_json},
    manifests={"calibrate": list(snakemake.input.calibrate), "threshold": list(snakemake.input.threshold_manifests)},
    error_distribution=ed,
    threshold=th,
    # the level-0 resolution of the slides it saw: what screened slides must have when tiling.target_mpp is null
    slide_mpp=[
        m
        for p in [*snakemake.input.calibrate, *snakemake.input.threshold_manifests]
        if (m := json.loads(Path(p).read_text()).get("mpp")) is not None
    ],
)
card["training"] = json.loads(Path(snakemake.input.model_json).read_text())
write_json(snakemake.output.card, card | {"provenance": provenance(None, saved_model=snakemake.output.saved_model)})
log.info("wrote %s", snakemake.output.card)
