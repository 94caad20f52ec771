"""Rule export_software: per conda env (envs/*.yaml) the pinned versions next to the versions this run imports."""

import platform

from proganomaly.common.io import atomic_path, write_text
from proganomaly.common.runlog import git_commit, setup_logging
from proganomaly.report import tables
from proganomaly.report.software import environments_table

log = setup_logging(snakemake.log[0])
table = environments_table(list(snakemake.input.envs))
if table.empty:
    raise SystemExit(f"no dependencies found in {list(snakemake.input.envs)}: are the envs/*.yaml files conda envs?")
differs = table[table["status"] == "differs"]
for row in differs.itertuples():
    log.warning("%s: %s pinned %s, installed %s", row.env, row.package, row.pinned, row.installed)
with atomic_path(snakemake.output.tsv) as tmp:
    table.to_csv(tmp, sep="\t", index=False)
note = (
    f"Python {platform.python_version()} on {platform.platform()}, commit {git_commit()}. "
    "'pinned' is what each conda env file requests; 'installed' is what this run imported (importlib.metadata). "
    "Runs without --use-conda use the installed versions for every rule."
)
sections = [(f"env: {env}", part.drop(columns="env")) for env, part in table.groupby("env", sort=True)]
write_text(snakemake.output.html, tables.page("Software environments", sections, note))
log.info("%d packages in %d envs, %d differ from their pin", len(table), table["env"].nunique(), len(differs))
