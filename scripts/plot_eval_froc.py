"""Rule plot_eval_froc: lesion sensitivity against false-positive area per mm² of normal tissue over the KDE
thresholds, at the operating dilation, per pooled split (results/eval/pooled/{split}/metrics.json specificity.froc)."""

import json
from pathlib import Path

from proganomaly.common.runlog import setup_logging
from proganomaly.report import evaluation, style

log = setup_logging(snakemake.log[0])
split = snakemake.wildcards.split
froc = (json.loads(Path(snakemake.input.metrics).read_text()).get("specificity") or {}).get("froc") or {}
style.save(evaluation.plot_froc({f"{split} pooled": froc}), snakemake.output[0])
log.info("%s: FROC over %d thresholds at dilation %s", split, len(froc.get("threshold", [])), froc.get("dilation"))
