"""Rule make_demo_cohort: cut the demo slide into five slides, put anomalies of every class into validation and test.

Outputs: results/demo/{slide}.tif (tiled pyramidal JPEG TIFFs with px/cm resolution tags), the QuPath GeoJSON
annotations of the anomalies for the validation and test slides (each feature classified by kind, with its
`anomaly_group`), cohort.json (regions, anomalies, class table, seed, provenance) and cohort.png (overview).
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from proganomaly.common.io import atomic_path
from proganomaly.common.runlog import Progress, provenance, setup_logging, write_json
from proganomaly.config import from_params
from proganomaly.data.slide import open_slide
from proganomaly.demo.anomalies import KINDS, class_table
from proganomaly.demo.cohort import make_cohort, write_cohort
from proganomaly.maps.pyramid import count_tiles, level_shapes

COLORS = {"train": "tab:blue", "calibrate": "tab:green", "validation": "tab:orange", "test": "tab:red"}


def overview(path, slide: np.ndarray, cohort: list[dict]) -> None:
    """Source slide with the five regions, and each demo slide with its annotations coloured by class."""
    fig = plt.figure(figsize=(13, 9), layout="constrained")
    grid = fig.add_gridspec(len(cohort), 2, width_ratios=[1, 1.5])
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(slide[::4, ::4], extent=(0, slide.shape[1], slide.shape[0], 0))
    for item in cohort:
        r = item["region"]
        ax.add_patch(Rectangle((r.x, r.y), r.width, r.height, fill=False, lw=2, color=COLORS[r.split]))
        ax.text(r.x + 20, r.y + 80, f"{r.slide_id}\n{100 * r.tissue_share:.0f}% of tissue", color=COLORS[r.split],
                fontsize=8, bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})  # fmt: skip
    ax.set_title("source: CMU-1 small region (level-0 px)")
    for i, item in enumerate(cohort):
        r = item["region"]
        sub = fig.add_subplot(grid[i, 1])
        sub.imshow(item["rgb"][::2, ::2], extent=(0, r.width, r.height, 0))
        for p in item["placed"]:
            x, y = p.polygon.exterior.xy
            sub.plot(x, y, color=np.array(KINDS[p.kind].color) / 255, lw=1.2)
        sub.set_title(f"{r.slide_id} ({r.split}, {r.width}×{r.height} px, {len(item['placed'])} anomalies)", fontsize=9)
        sub.set_xticks([])
        sub.set_yticks([])
    handles = [plt.Line2D([], [], color=np.array(s.color) / 255, label=s.classification) for s in KINDS.values()]
    fig.legend(handles=handles, loc="lower left", fontsize=8, ncols=3)
    with atomic_path(path, ".tmp.png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


log = setup_logging(snakemake.log[0])
config = from_params(snakemake.params, snakemake.rule)
demo = config.demo
with open_slide(snakemake.input.slide, mpp=None) as slide:
    width, height = slide.dimensions
    mpp = float(slide.mpp)
    source_rgb = slide.read_region(0, 0, width, height)
log.info("source %s: %d×%d px at %.4f µm/px", snakemake.input.slide, width, height, mpp)

cohort = make_cohort(source_rgb, config.seed, list(demo.anomaly_kinds), demo.anomalies_per_kind)

outputs = {Path(p).name: p for p in snakemake.output}
n_tiles = sum(count_tiles(level_shapes(*item["rgb"].shape[:2], demo.tile_px), demo.tile_px) for item in cohort)
progress = Progress(n_tiles, "demo pyramids", "tiles", logger=log)
records = write_cohort(cohort, outputs, mpp, tile=demo.tile_px, quality=demo.jpeg_quality, seed=config.seed,
                       progress=progress.update)  # fmt: skip
for record in records:
    kinds = [a["kind"] for a in record["anomalies"]]
    log.info("%s (%s): %s px, levels %s%s", record["slide_id"], record["split"], record["levels"][0],
             len(record["levels"]), f", anomalies {kinds}" if kinds else "")  # fmt: skip

overview(snakemake.output.overview, source_rgb, cohort)
source = json.loads(Path(snakemake.input.source).read_text())
write_json(
    snakemake.output.cohort,
    {
        "seed": config.seed,
        "source": {"path": snakemake.input.slide, "sha256": source["slide"]["sha256"], "mpp": mpp},
        "foreign_source": "skimage.data.immunohistochemistry() (IHC: DAB + haematoxylin, CMMI; no known copyright restrictions)",
        "classes": class_table(),
        "slides": records,
        "provenance": provenance(config.to_dict()),
    },
)
