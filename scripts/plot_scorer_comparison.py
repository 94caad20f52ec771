"""Rule plot_scorer_comparison: the detection benchmark's scorer comparison as a figure and a table."""

import json
from pathlib import Path

from proganomaly.common.io import write_text
from proganomaly.common.runlog import setup_logging
from proganomaly.config import from_params
from proganomaly.report import scorers, style, tables

log = setup_logging(snakemake.log[0])
cfg = from_params(snakemake.params, snakemake.rule)
bench = json.loads(Path(snakemake.input.benchmark).read_text())
summary = bench["summary"]
chosen = cfg.calibration.scorer
style.save(scorers.plot_comparison(summary, chosen=chosen), snakemake.output.figure)
note = (
    f"From {Path(snakemake.input.benchmark).name}: {bench.get('what', 'the detection benchmark')}. "
    f"This run's scorer: {chosen}. Scorers and settings are chosen on the validation columns only; test is reported."
)
sections = [
    (f"Pixel AUROC / AP of the {scorers.MAP_LABELS[m]}, per group", scorers.comparison_table(summary, m))
    for m in ("mahalanobis_d2", "kde")
]
sections.append(("Pixel AUROC / AP of d², per class", scorers.comparison_table(summary, level="class")))
write_text(snakemake.output.table, tables.page("Scorer comparison (detection benchmark)", sections, note))
log.info("scorer comparison of %d variants from %s", len(summary), snakemake.input.benchmark)
