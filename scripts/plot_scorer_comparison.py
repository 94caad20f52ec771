"""Rule plot_scorer_comparison: the detection benchmark's scorer comparison as a figure and a table, the configured
scorer (calibration.scorer, and for `combined` its parts scoring.combined.scorers) in bold."""

import json
from pathlib import Path

from proganomaly.common.io import write_text
from proganomaly.common.runlog import setup_logging
from proganomaly.config import from_params
from proganomaly.config.build import load_schema
from proganomaly.report import scorers, style, tables

log = setup_logging(snakemake.log[0])
cfg = from_params(snakemake.params, snakemake.rule)
bench = json.loads(Path(snakemake.input.benchmark).read_text())
summary = bench["summary"]
scorer = cfg.calibration.scorer
parts = list(cfg.scoring.combined.scorers) if scorer == "combined" else None
# A benchmark row named plain `combined` ran the schema's default parts.
default_parts = load_schema()["properties"]["scoring"]["properties"]["combined"]["properties"]["scorers"]["default"]
chosen = scorers.configured_labels(summary, scorer, parts, default_parts)
configured = f"{scorer}={'+'.join(parts)}" if parts else scorer
if not chosen:
    log.warning("the configured scorer %s has no row in the benchmark %s", configured, snakemake.input.benchmark)
style.save(scorers.plot_comparison(summary, chosen=chosen), snakemake.output.figure)
note = (
    f"From {Path(snakemake.input.benchmark).name}: {bench.get('what', 'the detection benchmark')}. "
    f"This run's scorer: {configured} (in bold: "
    f"{', '.join(sorted(chosen)) if chosen else 'not in the benchmark'}). Scorers and settings are chosen on the "
    "validation columns only; test is reported."
)


def section(heading, table):
    bold = (table["variant"] == "default") & table["scorer"].isin(chosen) if len(table) else []
    return heading, table, list(bold)


sections = [
    section(f"Pixel AUROC / AP of the {scorers.MAP_LABELS[m]}, per group", scorers.comparison_table(summary, m))
    for m in ("mahalanobis_d2", "kde")
]
sections.append(section("Pixel AUROC / AP of d², per class", scorers.comparison_table(summary, level="class")))
write_text(snakemake.output.table, tables.page("Scorer comparison (detection benchmark)", sections, note))
log.info("scorer comparison of %d variants from %s; configured %s = rows %s", len(summary),
         snakemake.input.benchmark, configured, sorted(chosen))  # fmt: skip
