"""Rule make_demo_cohort: cut the demo slide into the ten slides of config/slides.tsv, stained and scanned as four labs
would, with anomalies of every class in the annotated validation and test slides (proganomaly.demo.cohort).

Outputs: results/demo/{slide}.tif (tiled pyramidal JPEG TIFFs with px/cm resolution tags, each at its lab's JPEG
quality), QuPath GeoJSON for every validation and test slide (the anomalies, each feature classified by kind with its
`anomaly_group`; an empty FeatureCollection for the normal-only slides: reviewed, nothing anomalous), cohort.json
(per slide: band, region, dihedral transform, lab, appearance, JPEG quality, normal_only, anomaly share of tissue,
anomalies; class table, labs, seed, provenance) and cohort.png (overview, every slide with its lab).
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
from proganomaly.demo.appearance import LABS, TRAINING_LABS
from proganomaly.demo.cohort import make_cohort, write_cohort
from proganomaly.maps.pyramid import count_tiles, level_shapes

COLORS = {"train": "tab:blue", "calibrate": "tab:green", "validation": "tab:orange", "test": "tab:red"}
SLIDE_COLUMNS = 2


def overview(path, slide: np.ndarray, cohort: list[dict]) -> None:
    """Source slide with the bands and the slides cut from each, and every demo slide (lab, split, transform) with
    its annotations coloured by class."""
    rows = -(-len(cohort) // SLIDE_COLUMNS)
    fig = plt.figure(figsize=(16, 2.2 * rows + 1), layout="constrained")
    grid = fig.add_gridspec(rows, 1 + SLIDE_COLUMNS, width_ratios=[1.2] + [1.5] * SLIDE_COLUMNS)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(slide[::4, ::4], extent=(0, slide.shape[1], slide.shape[0], 0))
    by_band: dict[str, list[dict]] = {}
    for item in cohort:
        by_band.setdefault(item["spec"].band, []).append(item)
    for items in by_band.values():
        for item in items:
            r = item["region"]
            ax.add_patch(Rectangle((r.x, r.y), r.width, r.height, fill=False, lw=1.5, color=COLORS[r.split]))
        r = items[0]["region"]
        names = "\n".join(f"{i['spec'].slide_id} (lab {i['spec'].lab})" for i in items)
        ax.text(r.x + 20, r.y + 60, names, color=COLORS[r.split], fontsize=7, va="top",
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})  # fmt: skip
    ax.set_title("source: CMU-1 small region (level-0 px)")
    for i, item in enumerate(cohort):
        spec = item["spec"]
        h, w = item["rgb"].shape[:2]
        sub = fig.add_subplot(grid[i // SLIDE_COLUMNS, 1 + i % SLIDE_COLUMNS])
        sub.imshow(item["rgb"][::2, ::2], extent=(0, w, h, 0))
        for p in item["placed"]:
            x, y = p.polygon.exterior.xy
            sub.plot(x, y, color=np.array(KINDS[p.kind].color) / 255, lw=1.2)
        if spec.annotated:
            what = f"{len(item['placed'])} anomalies, {100 * item['anomaly_share']:.1f}% of tissue"
        else:
            what = "normal only (empty annotations)" if spec.normal_only else "unannotated"
        sub.set_title(f"{spec.slide_id}: lab {spec.lab}, {spec.split}, {spec.transform}\n{w}×{h} px, {what}",
                      fontsize=8, color=COLORS[spec.split])  # fmt: skip
        sub.set_xticks([])
        sub.set_yticks([])
    handles = [plt.Line2D([], [], color=np.array(s.color) / 255, label=s.classification) for s in KINDS.values()]
    fig.legend(handles=handles, loc="lower left", fontsize=8, ncols=3)
    with atomic_path(path, ".tmp.png") as tmp:
        fig.savefig(tmp, dpi=80)
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
records = write_cohort(cohort, outputs, mpp, tile=demo.tile_px, seed=config.seed, progress=progress.update)
for record in records:
    kinds = [a["kind"] for a in record["anomalies"]]
    log.info("%s (%s, lab %s, %s, JPEG %d): %s px, levels %s%s", record["slide_id"], record["split"], record["lab"],
             record["transform"], record["jpeg_quality"], record["levels"][0], len(record["levels"]),
             f", anomalies {kinds} ({100 * record['anomaly_share']:.1f}% of tissue)" if kinds else "")  # fmt: skip

overview(snakemake.output.overview, source_rgb, cohort)
source = json.loads(Path(snakemake.input.source).read_text())
write_json(
    snakemake.output.cohort,
    {
        "seed": config.seed,
        "source": {"path": snakemake.input.slide, "sha256": source["slide"]["sha256"], "mpp": mpp},
        "foreign_source": "skimage.data.immunohistochemistry() (IHC: DAB + haematoxylin, CMMI; no known copyright restrictions)",
        "classes": class_table(),
        "labs": {lab: appearance.to_dict() for lab, appearance in LABS.items()},
        "training_labs": list(TRAINING_LABS),
        "slides": records,
        "provenance": provenance(config.to_dict()),
    },
)
