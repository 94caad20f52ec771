"""Rule export_config: the validated configuration (every default filled in) as YAML, for the report."""

import json

from proganomaly.common.runlog import git_commit, setup_logging
from proganomaly.config import Config
from proganomaly.report.software import config_yaml
from proganomaly.report.style import write_text

log = setup_logging(snakemake.log[0])
Config.from_dict(snakemake.config)  # fails here, naming the key, if the config does not type-check
# A JSON round trip turns the config into plain dicts and lists (snakemake may hand over its own mapping types).
config = json.loads(json.dumps(dict(snakemake.config), default=str))
header = (
    "# proganomaly configuration as this run used it: config/config.yaml, --config/--configfile overrides and the\n"
    f"# schema defaults (workflow/schemas/config.schema.yaml). Commit: {git_commit()}"
)
write_text(snakemake.output[0], config_yaml(config, header))
log.info("wrote %s (%d top-level sections)", snakemake.output[0], len(config))
