"""Rule choose_operating_point: the threshold × dilation cell used for every evaluated slide, chosen on the pooled
grid of the validation slides with an annotation file, normal-only slides included (best F1 within the budget of
normal tissue inside the polygons by default; the configured fixed cell when there are none, saying so)."""

from pathlib import Path

import pandas as pd

from proganomaly.common.runlog import provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.evaluation import operating

log = setup_logging(snakemake.log[0])
config = from_params(snakemake.params, snakemake.rule)
grids = {Path(p).parent.name: pd.read_parquet(p) for p in snakemake.input.grids}
op = operating.choose(grids, config.evaluation)
write_json(
    snakemake.output[0],
    op | {"provenance": provenance(config.to_dict(), inputs=[str(p) for p in snakemake.input.grids])},
)
if op.get("warning"):
    log.warning("operating point: %s", op["warning"])
log.info("operating point: %s, KDE > %g, dilation %g%s", op["source"], op["threshold"], op["dilation"],
         f" ({op['reason']})" if "reason" in op else "")  # fmt: skip
