"""Rule plot_training: losses per growth phase, held-out reconstruction error and training throughput.

The sample grids (results/detectors/{detector}/model/samples/) are report items of train_reconstruction itself, one per phase.
"""

import json
from pathlib import Path

import pandas as pd

from proganomaly.common.runlog import setup_logging
from proganomaly.config import from_params
from proganomaly.report import style, training

log = setup_logging(snakemake.log[0])
cfg = from_params(snakemake.params, snakemake.rule)
loss_log = pd.read_csv(snakemake.input.loss_log)
if loss_log.empty:
    raise SystemExit(f"{snakemake.input.loss_log} has no rows: did training log any step (training.log_every_steps)?")
heldout = pd.read_csv(snakemake.input.heldout)
info = json.loads(Path(snakemake.input.training).read_text())
out = snakemake.output

style.save(training.plot_losses(loss_log, cfg.report.loss_smoothing), out.losses)

if heldout.empty:
    fig = style.message_figure("Held-out reconstruction error", "training.heldout_examples is 0: nothing was logged.")
else:
    fig = training.plot_heldout(heldout)
style.save(fig, out.heldout)

rates = training.throughput(loss_log)
style.save(training.plot_throughput(rates, str(info.get("device", ""))), out.throughput)
log.info("%d loss rows, %d held-out rows, %d phases", len(loss_log), len(heldout), len(rates))
