"""Rule plot_qc: patches per slide and resolution (records manifests) and the slide table (sheet + tiling QC)."""

import json
from pathlib import Path

from proganomaly.common.io import write_text
from proganomaly.common.runlog import setup_logging
from proganomaly.data.records import read_manifest
from proganomaly.data.sheet import read_slide_sheet
from proganomaly.report import qc, style, tables

log = setup_logging(snakemake.log[0])
sheet = read_slide_sheet(snakemake.input.sheet)
qcs = {}
for path in snakemake.input.qc:
    record = json.loads(Path(path).read_text())
    qcs[record["slide_id"]] = record
manifests = [read_manifest(p) for p in snakemake.input.manifests]

counts = qc.patch_counts(manifests)
splits = {s: sheet.loc[s, "split"] for s in sheet.index}
style.save(qc.plot_patch_counts(counts, splits), snakemake.output.counts)

table = qc.slide_table(sheet, qcs)
note = (
    f"Slide sheet {snakemake.input.sheet}. Sizes are level 0; tissue is the fraction of the slide found as tissue on "
    "its thumbnail; patches kept are grid cells with at least the configured tissue fraction."
)
page = tables.page("Slides and splits", [("Per split", qc.split_summary(table)), ("Per slide", table)], note)
write_text(snakemake.output.table, page)
log.info("plotted %d slides, %d manifests", len(table), len(manifests))
