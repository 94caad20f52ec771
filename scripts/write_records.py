"""Rule write_records: per-resolution TFRecords of one slide's tissue patches, and their manifest.

With stain.normalisation on, every patch is normalised with the slide's stain estimate (input `stain`, the
tile_slide's stain.json) as it is read, and the manifest records the method and the estimate's checksum.
"""

import json
from pathlib import Path

import pandas as pd

from proganomaly.common.io import sha256_file
from proganomaly.common.runlog import Progress, provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.data.records import build_manifest, write_slide_records
from proganomaly.data.slide import open_slide
from proganomaly.data.stain import read_estimate, slide_normaliser

log = setup_logging(snakemake.log[0])
cfg = from_params(snakemake.params, snakemake.rule)
slide_id = snakemake.wildcards.slide
patches = pd.read_parquet(snakemake.input.patches)
qc = json.loads(Path(snakemake.input.qc).read_text())
sizes = cfg.records.resolutions(cfg.tiling.patch_size_px)
out_dir = Path(snakemake.output.records)
method = cfg.stain.normalisation
stain_path = snakemake.input.get("stain") or None
normaliser = slide_normaliser(method, stain_path)

log.info("%s: %d patches → records at %s px, stain normalisation %s", slide_id, len(patches), sizes, method)
with open_slide(snakemake.input.slide, mpp=qc.get("mpp")) as slide:
    progress = Progress(len(patches), f"write_records {slide_id}", "patches", logger=log)
    resolutions = write_slide_records(
        slide,
        patches,
        out_dir,
        sizes,
        cfg.records.shard_max_examples,
        cfg.tiling.patch_size_px,
        progress.update,
        transform=normaliser,
    )


def _used(path, method: str) -> dict | None:
    if not path:
        return None
    estimate = read_estimate(path)
    return {"i0": estimate["i0"], method: estimate[method]}


manifest = build_manifest(
    slide_id,
    out_dir,
    resolutions,
    cfg.tiling.patch_size_px,
    patch_extent_level0_px=sorted({int(w) for w in patches["width"]}) if len(patches) else [],
    mpp=qc.get("mpp"),
    source={
        "slide": snakemake.input.slide,
        "patch_table": snakemake.input.patches,
        "patch_table_sha256": sha256_file(snakemake.input.patches),
    },
    params={"sizes": sizes, "shard_max_examples": cfg.records.shard_max_examples},
    provenance=provenance(cfg.to_dict()),
    stain={
        "normalisation": method,
        "estimate": stain_path,
        # The numbers the patches were normalised with, not the file's hash: stain.json also holds its provenance
        # (a timestamp), so a hash would differ between two runs that normalised identically.
        "estimate_used": _used(stain_path, method),
    },
)
write_json(snakemake.output.manifest, manifest)
log.info("wrote %s", {s: r["count"] for s, r in resolutions.items()})
