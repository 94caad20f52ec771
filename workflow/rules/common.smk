import re
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir).parent / "scripts"))

from proganomaly.config import Config, validate_config
from proganomaly.sheet import read_slide_sheet, records_for_validation

# One validation, at parse time, before any job: defaults come from the schema.
validate_config(config)
CONFIG = Config.from_dict(config)
SLIDES = read_slide_sheet(config["slides"])
for _row in records_for_validation(SLIDES):
    validate(_row, schema="../schemas/slides.schema.yaml")

RESOLUTIONS = CONFIG.records.resolutions(CONFIG.tiling.patch_size_px)


wildcard_constraints:
    slide="|".join(re.escape(s) for s in SLIDES.index),
    res=r"\d+",


def slides_in(*splits):
    """Slide ids of the given splits, in sheet order."""
    return [s for s in SLIDES.index if SLIDES.loc[s, "split"] in splits]


def slide_file(wildcards):
    return SLIDES.loc[wildcards.slide, "path"]


def slide_mpp(wildcards):
    """The sheet's mpp override for a slide, or None to use the file's metadata."""
    mpp = SLIDES.loc[wildcards.slide, "mpp"]
    return None if mpp != mpp else float(mpp)


def annotation_file(wildcards):
    """The slide's annotation GeoJSON, or an empty list when it has none."""
    path = SLIDES.loc[wildcards.slide, "annotations"]
    return [path] if path else []


def annotated_slides(*splits):
    return [s for s in slides_in(*splits) if SLIDES.loc[s, "annotations"]]


def manifests(*splits):
    return expand("results/records/{slide}.manifest.json", slide=slides_in(*splits))


def record_dirs(*splits):
    return expand("results/records/{slide}", slide=slides_in(*splits))


def get_final_output():
    """Everything `snakemake` builds by default."""
    every = list(SLIDES.index)
    targets = expand("results/tiles/{slide}.patches.parquet", slide=every)
    targets += expand("results/records/{slide}.manifest.json", slide=every)
    targets += expand("results/tiles/{slide}.mask.png", slide=every)
    return targets
