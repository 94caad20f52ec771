"""Rule tile_slide: tissue mask of one slide, and one patch table per patch grid on it, with QC records and the report image.

The tissue mask is detected once; each grid of params.grids (patch_size_px, target_mpp, stride_px,
min_tissue_fraction: one per detector, in the order of the outputs `patches` and `qc`) is scored against it.
Outputs: per grid the patch table (Parquet) and QC JSON; the overlay PNG (thumbnail, tissue outline, patches kept by
any grid), the binary tissue mask PNG (0/255, thumbnail resolution; its level-0 downsample is `thumbnail_downsample`
in the QC JSON) and the slide's stain estimate (proganomaly.data.stain.estimate on the thumbnail's tissue pixels),
which write_records and infer_slide read when stain.normalisation is on. It is written whatever that key says, so
choosing a normalisation never re-tiles.
File-level problems (missing, empty, truncated, not a TIFF, no mpp) fail in open_slide before any pixel is decoded.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from proganomaly.common.io import atomic_path
from proganomaly.common.runlog import provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.data import stain
from proganomaly.data.slide import SlideError, open_slide
from proganomaly.data.tiling import TilingError, render_overlay, tile_slide


def save_png(path, image: np.ndarray) -> None:
    with atomic_path(path, ".tmp.png") as tmp:
        Image.fromarray(image).save(tmp)


log = setup_logging(snakemake.log[0])
cfg = from_params(snakemake.params, snakemake.rule)
slide_id = snakemake.wildcards.slide
slide_path = snakemake.input.slide
out = snakemake.output

try:
    slide = open_slide(slide_path, mpp=snakemake.params.mpp)
except SlideError as exc:
    raise SlideError(f"slide '{slide_id}': {exc}") from None

tilings = [dataclasses.replace(cfg.tiling, **grid) for grid in snakemake.params.grids]
results = []
with slide:
    log.info("%s: %s", slide_id, slide)
    for tiling in tilings:
        try:
            results.append(tile_slide(slide, slide_id, tiling, tissue_of=results[0] if results else None))
        except TilingError as exc:
            if exc.result is not None:
                keep = Path(snakemake.log[0]).with_suffix(".mask.png")
                save_png(keep, render_overlay(slide, exc.result))
                log.error("tiling failed; the tissue overlay is kept at %s for inspection", keep)
            raise
    first = results[0]
    overlay = render_overlay(slide, dataclasses.replace(first, patches=pd.concat([r.patches for r in results])))

for result, table, qc_path in zip(results, out.patches, out.qc, strict=True):
    with atomic_path(table) as tmp:
        result.patches.to_parquet(tmp, index=False)
    qc = dict(result.qc)
    qc["provenance"] = provenance(cfg.to_dict(), slide=str(slide_path))
    write_json(qc_path, qc)
    log.info(
        "%s: tissue %.1f%% of the slide, %d of %d patches kept (%d level-0 px each), %.2f s",
        slide_id,
        100 * qc["tissue_fraction"],
        qc["patch_count"],
        qc["candidate_patches"],
        qc["patch"]["size_level0_px"],
        qc["seconds"]["total"],
    )
save_png(out.tissue, np.where(first.mask, 255, 0).astype(np.uint8))
save_png(out.mask, overlay)
qc = first.qc
estimate = stain.estimate(first.thumbnail, first.mask)
estimate["source"] = {
    "image": "tissue thumbnail",
    "thumbnail_mpp": qc["tissue"]["thumbnail_mpp"],
    "thumbnail_downsample": qc["thumbnail_downsample"],
    "thumbnail_shape": qc["thumbnail_shape"],
}
estimate["provenance"] = provenance(cfg.to_dict(), slide=str(slide_path))
write_json(out.stain, estimate)
if estimate["macenko"]["status"] != "ok":
    log.warning("%s: Macenko stain estimate: %s", slide_id, estimate["macenko"]["reason"])
log.info("%s: stain I0 %s (%s)", slide_id, [round(v, 1) for v in estimate["i0"]], estimate["i0_source"])
