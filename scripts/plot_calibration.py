"""Rule plot_calibration: the error distribution, the d² histogram with τ and (annotated) the F-β curve."""

import json
from pathlib import Path

from proganomaly.common.runlog import setup_logging
from proganomaly.report import calibration, style

log = setup_logging(snakemake.log[0])
ed = json.loads(Path(snakemake.input.error_distribution).read_text())
th = json.loads(Path(snakemake.input.threshold).read_text())
style.save(calibration.plot_error_distribution(ed), snakemake.output.error_distribution)
style.save(calibration.plot_d2_histogram(th), snakemake.output.d2)
if snakemake.output.fbeta:
    if not th.get("supervised"):
        log.warning("%s has no supervised threshold (no labelled pixels?)", snakemake.input.threshold)
    style.save(calibration.plot_fbeta_curve(th), snakemake.output.fbeta[0])
log.info("τ = %s (%s)", th.get("tau"), th.get("method"))
