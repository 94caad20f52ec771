"""Where the workflow writes: every output, log and benchmark path, as one table of templates under RESULTS.

The rules ask these functions for their paths instead of spelling them, so the layout changes here and nowhere else.
A function fills the wildcards it is given and leaves the others as ``{wildcard}`` text for Snakemake:

    slide_path("maps.json")                       -> "results/detectors/{detector}/slides/{slide}/maps.json"
    slide_path("maps.json", slide="demo_test")    -> "results/detectors/{detector}/slides/demo_test/maps.json"
    log_path("infer_slide", "{detector}/{slide}") -> "results/logs/infer_slide/{detector}/{slide}.log"

The result is a plain pattern (single braces), so it works as a rule's input, output, log or benchmark as it is. In
``expand()``, either fill every wildcard or pass ``allow_missing=True`` to leave the rule's own (instead of the
``{{slide}}`` escape of a hand-written pattern): ``expand(slide_path("maps/{name}.tif"), name=MAP_NAMES,
allow_missing=True)``.

DETECTOR_KINDS are what one named detector is and makes, under ``detectors/{detector}/``: its patch grid and records
of each slide (its patch size and resolution are its own), its model, calibration and export, and what it infers
and stitches on each slide. The slide's tissue mask and stain estimate (tiles), the fused maps that the evaluation
and report read (fused), and everything after them are the run's, one per slide. A whole run is the same edit to
RESULTS (e.g. ``results/{run}``).

Nothing here reads the config: the layout is fixed at import, the same for every job and every parse.
"""

from __future__ import annotations

import string
from functools import partial
from pathlib import PurePosixPath

RESULTS = "results"

# {file}: the file (or subpath) inside the kind's folder, chosen by the rule; every other field is a wildcard.
DETECTOR_KINDS = {
    "grid": "detectors/{detector}/tiles/{slide}.{file}",  # tile_slide: the detector's patch table and its QC
    "records": "detectors/{detector}/records/{slide}",
    "manifest": "detectors/{detector}/records/{slide}.manifest.json",
    "model": "detectors/{detector}/model/{file}",
    "calibration": "detectors/{detector}/calibration/{file}",
    "export": "detectors/{detector}/export/{file}",
    "slide": "detectors/{detector}/slides/{slide}/{file}",  # infer_slide and stitch_maps: scores, canvases, maps
}
RUN_KINDS = {
    "demo": "demo/{file}",
    "tiles": "tiles/{slide}.{file}",  # tile_slide: tissue mask and stain estimate, shared by every detector
    "fused": "slides/{slide}/{file}",  # the slide's detectors' maps fused: what evaluation and report read
    "eval": "eval/{slide}/{file}",
    "pooled": "eval/pooled/{split}/{file}",
    "operating_point": "eval/operating_point.json",
    "report": "report/{file}",
    "fusion": "fusion/{file}",  # fit_fusion: the fused τ of every detector's maps together
    "log": "logs/{rule}/{file}.log",
    "benchmark": "benchmarks/{rule}/{file}.tsv",
}
LAYOUT = {**RUN_KINDS, **DETECTOR_KINDS}


class _KeepMissing(dict):
    """format_map values: a wildcard not given stays as its own {name} text."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fields(pattern: str) -> set[str]:
    """The {field} names of a pattern."""
    return {name for _, name, _, _ in string.Formatter().parse(pattern) if name}


def path(kind: str, file: str | None = None, **wildcards: str) -> str:
    """The path of a kind's file under RESULTS, with the given wildcards filled and the others left as {text}.

    file must be given exactly when the kind's template has a {file}; it may itself hold wildcards ("{slide}").
    """
    template = f"{RESULTS}/{LAYOUT[kind]}"
    if ("{file}" in template) != (file is not None):
        raise TypeError(f"layout kind {kind!r} ({LAYOUT[kind]}) {'needs' if file is None else 'takes no'} file")
    if file is not None:
        parts = PurePosixPath(file).parts
        if not file or file.startswith("/") or ".." in parts:
            raise ValueError(f"layout {kind!r}: file {file!r} must be a relative path inside its folder")
        template = template.replace("{file}", file)
    unknown = set(wildcards) - fields(template)
    if unknown:
        raise TypeError(f"layout kind {kind!r} ({template}) has no wildcard {sorted(unknown)}")
    return template.format_map(_KeepMissing(wildcards))


# One accessor per kind: `model_path("model.json", detector="main")` is path("model", "model.json", detector="main").
demo_path = partial(path, "demo")
tile_path = partial(path, "tiles")
grid_path = partial(path, "grid")
records_path = partial(path, "records")
manifest_path = partial(path, "manifest")
model_path = partial(path, "model")
calibration_path = partial(path, "calibration")
export_path = partial(path, "export")
slide_path = partial(path, "slide")
fused_path = partial(path, "fused")
fusion_path = partial(path, "fusion")
eval_path = partial(path, "eval")
pooled_path = partial(path, "pooled")


def pooled_set(split: str = "{split}") -> str:
    """A pooled split as an eval set: its folder under eval/, where a slide has its id (eval_set_path)."""
    return f"pooled/{split}"


def eval_set_path(file: str, evalset: str = "{evalset}") -> str:
    """A file of an eval set: an evaluated slide (its id) or a pooled split (pooled_set), which share eval/'s
    file names; the report reads both alike."""
    return path("eval", file, slide=evalset)


def operating_point_path() -> str:
    return path("operating_point")


def report_path(file: str, **wildcards: str) -> str:
    return path("report", file, **wildcards)


def log_path(rule: str, name: str, **wildcards: str) -> str:
    """A job's log: one per job, named by its wildcards ("{slide}") or "all"."""
    return path("log", name, rule=rule, **wildcards)


def bench_path(rule: str, name: str, **wildcards: str) -> str:
    """A job's benchmark TSV, named as its log."""
    return path("benchmark", name, rule=rule, **wildcards)
