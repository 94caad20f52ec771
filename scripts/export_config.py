"""Rule export_config: the validated configuration (every default filled in) as YAML, for the report."""

import json

from proganomaly.common.io import write_text
from proganomaly.common.runlog import git_commit, setup_logging
from proganomaly.config import from_params
from proganomaly.report.software import config_yaml

log = setup_logging(snakemake.log[0])
# Typing fails here, naming the key, if the config does not type-check; the JSON round trip gives plain YAML types.
config = json.loads(json.dumps(from_params(snakemake.params, snakemake.rule).to_dict(), default=str))
header = (
    "# proganomaly configuration as this run used it: config/config.yaml, --config/--configfile overrides and the\n"
    f"# schema defaults (workflow/schemas/config.schema.yaml). Commit: {git_commit()}"
)
write_text(snakemake.output[0], config_yaml(config, header))
log.info("wrote %s (%d top-level sections)", snakemake.output[0], len(config))
