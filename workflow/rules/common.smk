import dataclasses
import re


# SOURCE_DIR: the workflow's own files on this machine (a clone, or the cached copy of a remote module source), with
# scripts/ on sys.path. Never workflow.basedir (the user's Snakefile when this workflow is a module).
include: "source.smk"


WORKFLOW_DIR = SOURCE_DIR / "workflow"
# The detection benchmark's summary (tests/benchmarks/bench_detection.py), shipped with the workflow: the report shows
# it beside this run's own numbers.
SCORER_BENCHMARK = SOURCE_DIR / "docs" / "detection-benchmark.json"

from proganomaly.config import (
    DETECTOR_NAME_PATTERN,
    GRID_KEYS,
    Config,
    ConfigError,
    KdeConfig,
    apply_overrides,
    detector_configs,
    enum_of,
    validate_config,
)
from proganomaly.config import config_params as _config_params
from proganomaly.data.sheet import SLIDE_ID_PATTERN, read_slide_sheet, validate_rows
from proganomaly.detector.card import (
    CARD_FILE,
    SAVED_MODEL_DIR,
    SCREENING_KEYS,
    CardError,
    check_detector,
)
from proganomaly.layout import (
    RESULTS,
    bench_path,
    calibration_path,
    demo_path,
    eval_path,
    eval_set_path,
    export_path,
    fused_path,
    fusion_path,
    grid_path,
    log_path,
    manifest_path,
    model_path,
    operating_point_path,
    pooled_path,
    pooled_set,
    records_path,
    report_path,
    slide_path,
    tile_path,
)

# One validation, at parse time, before any job: defaults come from the schema, and the constraints between keys
# are checked here and nowhere else. Values from `--config` are first given their schema types (Snakemake reads
# `--config 'calibration={k_std: 3}'` as the string '3'), and dotted keys from the API or a module's `config:` nested.
# Each detector's config (its `detectors` entry merged over the top level; without entries, one detector `main` that is
# the top level) is validated whole and cross-key checked; the top level alone is only their base and the shared keys.
try:
    apply_overrides(
        config,
        getattr(getattr(workflow, "config_settings", None), "overwrite_config", None),
    )
    validate_config(config)
    CONFIG = Config.from_dict(config)
    DETECTORS = detector_configs(config)
    DETECTOR_CONFIGS = {name: Config.from_dict(raw) for name, raw in DETECTORS.items()}
except ConfigError as exc:
    raise WorkflowError(f"config: {exc}") from None
DETECTOR_NAMES = list(DETECTORS)
SLIDES = read_slide_sheet(config["slides"], produced_prefix=f"{RESULTS}/")
# Every row against the slides schema, with one compiled validator (snakemake.utils.validate per row re-reads the
# schema each time: ~9 s of a 1000-slide dry run).
validate_rows(SLIDES, WORKFLOW_DIR / "schemas" / "slides.schema.yaml", config["slides"])

# Screening mode (`detector: PATH`): an exported detector screens the sheet's slides; nothing is trained or
# calibrated. Its folder and card are checked against the config and the sheet here, before any job.
DETECTOR = CONFIG.detector
SCREENING = DETECTOR is not None
if SCREENING:
    from pathlib import Path

    if config["detectors"]:
        raise WorkflowError(
            f"detector: {DETECTOR} screens as the one detector of the top-level config, but detectors: also names "
            f"{', '.join(DETECTOR_NAMES)}; screening with several detectors is not built yet, so remove one of the two"
        )
    if Path(DETECTOR).resolve().is_relative_to(Path(RESULTS).resolve()):
        raise WorkflowError(
            f"detector: {DETECTOR} is inside {RESULTS}/, where this workflow writes its own detector; copy it out "
            f"(e.g. cp -r {DETECTOR} detectors/NAME) and set detector to the copy, so screening can never retrain it"
        )
    try:
        DETECTOR_CARD = check_detector(
            DETECTOR,
            config,
            enum_of("calibration.scorer"),
            {s: (None if m != m else float(m)) for s, m in SLIDES["mpp"].items()},
        )
    except CardError as exc:
        raise WorkflowError(str(exc)) from None


def detector_config(name):
    """The typed config of one detector: its entry merged over the top level."""
    return DETECTOR_CONFIGS[name]


def detector_params(*paths):
    """config_params of the job's own detector (`params: **detector_params(...)` in a rule with a {detector}
    wildcard): one function of the wildcards per top-level key, so each job gets, and reruns on, its detector's
    values only, and its script reads them as usual (from_params)."""

    def param(key):
        def value(wildcards):
            return _config_params(DETECTORS[wildcards.detector], *paths)[key]

        return value

    return {key: param(key) for key in _config_params(config, *paths)}


def detector_file(name, detector="{detector}"):
    """A file of the detector that infers the maps: export_model's output (export_path), or the screening
    detector's folder. name: "saved_model" or "model_card"."""
    file = SAVED_MODEL_DIR if name == "saved_model" else CARD_FILE
    return f"{DETECTOR}/{file}" if SCREENING else export_path(file, detector=detector)


def threshold_file(detector="{detector}"):
    """A JSON with the detector's τ at its top level: fit_threshold's threshold.json, or the screening detector's
    model card."""
    if SCREENING:
        return detector_file("model_card")
    return calibration_path("threshold.json", detector=detector)


# The slide's final maps, the one set that everything after stitching reads (evaluation, operating point, QuPath
# export, report). One detector: its own stitched maps. Several: the fused maps of fusion.smk, under
# fused_path, which must hold what the readers take from a detector's stitched maps:
#   maps/{name}.tif for every name of MAP_NAMES (thumbnail, mahalanobis_d2, anomaly_map, flags, kde, ... on the
#   shared stitching.map_mpp grid; evaluation reads kde, flags, mahalanobis_d2 and anomaly_map, the plots
#   thumbnail, mahalanobis_d2 and kde), maps/{name}.u16.tif renditions of the float maps, overview/{name}.png,
#   maps.json (stitch_maps' grid metadata: level0_width/height, level0_mpp, downsample, ...), tiles.geojson,
#   and the fused τ at the top level of fit_fusion's threshold.json (plot_slide draws it on the d² panel).
FUSED = len(DETECTOR_NAMES) > 1


def final_map_file(file):
    """A file of the slide's final maps ("maps/kde.tif", "maps.json", "threshold.json"), {slide} left open."""
    if FUSED:
        return fusion_path(file) if file == "threshold.json" else fused_path(file)
    if file == "threshold.json":
        return threshold_file(DETECTOR_NAMES[0])
    return slide_path(file, detector=DETECTOR_NAMES[0])


# Fusion stage (fusion.smk): its inputs, every detector's maps of a slide.
def each_detector(file, slide="{slide}"):
    """A file of every detector's maps of one slide, in DETECTOR_NAMES order."""
    return [slide_path(file, detector=d, slide=slide) for d in DETECTOR_NAMES]


def tau_slide_maps(file):
    """`file` of every detector's maps of every τ slide, slide-major (what fit_fusion.py expects)."""
    return [m for s in slides_in(*TAU_SPLITS) for m in each_detector(file, slide=s)]


def tissue_grid(file):
    """The patch grid ("patches.parquet", "qc.json") whose patches are the tissue that the final maps are evaluated
    on: the first detector's (its QC also holds the slide's size and mpp, which are every detector's).
    """
    return grid_path(file, detector=DETECTOR_NAMES[0])


# {slide}: the sheet's id syntax, not an alternation of its ids. Snakemake compiles every rule file pattern's regex
# with the constraint inside; with 1000 TCGA-like ids (~60 characters) each compile took ~75 ms, ~30 s of a dry run.
# The syntax has no '/', so a slide wildcard is one path component; an id not in the sheet fails in sheet_row.
wildcard_constraints:
    slide=SLIDE_ID_PATTERN,
    detector=DETECTOR_NAME_PATTERN,
    res=r"\d+",


# Plain dicts of the sheet's columns: input functions run once per job, and a pandas lookup per slide per call made
# a 1000-slide dry run spend most of its time in DataFrame.loc.
SPLIT_OF = SLIDES["split"].to_dict()
ANNOTATIONS_OF = SLIDES["annotations"].to_dict()
PATH_OF = SLIDES["path"].to_dict()
MPP_OF = {s: (None if m != m else float(m)) for s, m in SLIDES["mpp"].items()}


def sheet_row(column, slide):
    """The sheet's value for a slide, or an error naming the sheet when the slide is not in it."""
    try:
        return column[slide]
    except KeyError:
        raise WorkflowError(
            f"slide '{slide}' is not in the slide sheet {config['slides']}; add it there or check the target"
        ) from None


def slides_in(*splits):
    """Slide ids of the given splits, in sheet order."""
    return [s for s, split in SPLIT_OF.items() if split in splits]


def slide_file(wildcards):
    return sheet_row(PATH_OF, wildcards.slide)


def slide_mpp(wildcards):
    """The sheet's mpp override for a slide, or None to use the file's metadata."""
    return sheet_row(MPP_OF, wildcards.slide)


def annotation_file(wildcards):
    """The slide's annotation GeoJSON, or an empty list when it has none."""
    path = sheet_row(ANNOTATIONS_OF, wildcards.slide)
    return [path] if path else []


def stain_estimate(wildcards):
    """The slide's stain estimate, for the rules that read patches, when they normalise them.

    With stain.normalisation none they do not depend on it, so nothing about it can rerun them.
    """
    if CONFIG.stain.normalisation == "none":
        return []
    return tile_path("stain.json", slide=wildcards.slide)


def annotated_slides(*splits):
    return [s for s in slides_in(*splits) if ANNOTATIONS_OF[s]]


def manifests(*splits, detector="{detector}"):
    """The records manifests of a detector's slides of these splits ({detector} left for the rule by default)."""
    return expand(
        manifest_path(detector=detector), slide=slides_in(*splits), allow_missing=True
    )


def tile_grids():
    """tile_slide's params.grids: each detector's patch grid, in the order of DETECTOR_NAMES (its outputs')."""
    return [{k: DETECTORS[d]["tiling"][k] for k in GRID_KEYS} for d in DETECTOR_NAMES]


# Splits whose TFRecords are read, by training (train, its held-out calibrate), fit_error_distribution (calibrate)
# and fit_threshold (TAU_SPLITS). Test slides are only inferred from the slide file, so writing their records (every
# patch at every resolution) would be wasted.
RECORD_SPLITS = ("train", "calibrate", "threshold", "validation")
# write_records' slide wildcard; "(?!)" matches nothing when no slide has records.
RECORD_SLIDES = "|".join(map(re.escape, slides_in(*RECORD_SPLITS))) or "(?!)"


def config_params(*paths):
    """The config at these dotted paths, as a rule's params (`params: **config_params(...)`): its script sees these
    keys and no other, and a job reruns exactly when one of them changes."""
    return _config_params(config, *paths)


# Read by the per-patch KDE, which runs inside infer_slide only when it is the chosen method.
PATCH_KDE_KEYS = [
    f"stitching.kde.{f.name}"
    for f in dataclasses.fields(KdeConfig)
    if f.name.startswith("patch_")
]


def infer_slide_params():
    # stitching is shared by every detector, so its choice of KDE decides for all of them
    paths = [
        "inference",
        "stitching.map_mpp",
        "stitching.kde.method",
        "calibration.border_px",
        "resources.gpus.inference",
    ]
    if CONFIG.stitching.kde.method == "patch":
        paths += PATCH_KDE_KEYS
    return detector_params(*paths)


def get_final_output():
    """Everything `snakemake` builds by default: every stage for every slide, and the report's figures. Screening:
    no training, calibration or export, and none of their figures."""
    every = list(SLIDES.index)
    targets = expand(grid_path("patches.parquet"), slide=every, detector=DETECTOR_NAMES)
    if not SCREENING:
        targets += expand(manifests(*RECORD_SPLITS), detector=DETECTOR_NAMES)
        targets += expand(
            [
                model_path("generator.weights.h5"),
                calibration_path("threshold.json"),
                export_path("saved_model"),
                export_path("model_card.json"),
            ],
            detector=DETECTOR_NAMES,
        )
    targets += slide_map_targets()
    targets += evaluation_targets()
    targets += [
        t for t in report_targets() if not (SCREENING and t.startswith(SCREENING_SKIPS))
    ]
    return targets


# Report figures of the training and calibration stages, which a screening run does not have.
SCREENING_SKIPS = (
    report_path("training/"),
    report_path("calibration/"),
)

# Inference stage (infer_slide, stitch_maps): every slide that is evaluated or fits τ gets maps; in screening mode
# every slide of the sheet, whatever its split.
SPLITS = ("train", "calibrate", "threshold", "validation", "test")
MAPPED_SPLITS = SPLITS if SCREENING else ("test", "validation", "threshold")


def slide_map_targets(splits=MAPPED_SPLITS):
    """Every detector's per-patch tables and maps of every slide of the given splits (the slides that are
    evaluated), and their final maps."""
    slides = slides_in(*splits)
    targets = expand(
        [slide_path("patches.parquet"), slide_path("maps.json")],
        slide=slides,
        detector=DETECTOR_NAMES,
    )
    targets += [
        t for t in expand(final_map_file("maps.json"), slide=slides) if t not in targets
    ]
    return targets


# Calibration stage (fit_threshold): τ is fitted on the threshold and validation slides (their normal pixels; the
# annotated ones also give the supervised τ).
TAU_SPLITS = ("threshold", "validation")


def threshold_annotations():
    """Annotation GeoJSONs of the annotated τ slides, in the order of annotated_slides(*TAU_SPLITS)."""
    return [ANNOTATIONS_OF[s] for s in annotated_slides(*TAU_SPLITS)]


# Report stage (report.smk): figures are targets only when some rule makes their inputs.
ENV_FILES = sorted(str(p) for p in (SOURCE_DIR / "envs").glob("*.yaml"))


def report_slides():
    """Slides of the report splits that have stitched maps."""
    mapped = set(slides_in(*MAPPED_SPLITS))
    return [s for s in slides_in(*CONFIG.report.splits) if s in mapped]


def overlay_slides():
    """Every slide with stitched maps gets an overlay picture (report.splits only chooses the four-panel figures)."""
    return slides_in(*MAPPED_SPLITS)


def slide_prediction(wildcards):
    """The slide's predicted polygons, when it is evaluated."""
    path = eval_path("predicted.geojson", slide=wildcards.slide)
    return [path] if wildcards.slide in evaluated_slides() else []


def slide_metrics(wildcards):
    """The slide's metrics at the operating point (whose cell the panels' title states), when it is evaluated."""
    path = eval_path("at_operating_point.json", slide=wildcards.slide)
    return [path] if wildcards.slide in evaluated_slides() else []


def calibration_figures():
    names = ["error_distribution", "d2_histogram"]
    if annotated_slides(*TAU_SPLITS):
        names.append("fbeta_curve")
    return expand(
        report_path("calibration/{detector}/{name}.png"),
        name=names,
        detector=DETECTOR_NAMES,
    )


def report_targets():
    """Every figure and table of the report."""
    targets = [
        report_path("software/config.yaml"),
        report_path("software/environments.html"),
    ]
    targets += expand(
        report_path("qc/{detector}/{name}"),
        detector=DETECTOR_NAMES,
        name=("patch_counts.png", "slides.html"),
    )
    targets += expand(tile_path("mask.png"), slide=list(SLIDES.index))
    targets += expand(
        report_path("training/{detector}/{n}.png"),
        n=("losses", "heldout", "throughput"),
        detector=DETECTOR_NAMES,
    )
    targets += calibration_figures()
    targets += expand(report_path("slides/{slide}.png"), slide=report_slides())
    targets += expand(report_path("overlays/{slide}.png"), slide=overlay_slides())
    if EVAL_SETS:
        targets += expand(report_path("eval/{name}.grid.png"), name=EVAL_SETS)
        targets += [
            report_path("eval/pixel_curves.png"),
            report_path("eval/metrics.html"),
        ]
    if pooled_splits():
        targets += expand(
            report_path("eval/pooled/{split}.{kind}_curves.png"),
            split=pooled_splits(),
            kind=("class", "group"),
        )
        targets += expand(
            report_path("eval/pooled/{split}.froc.png"), split=pooled_splits()
        )
        targets.append(report_path("eval/class_metrics.html"))
    if SCORER_BENCHMARK.is_file():
        targets += [
            report_path("eval/scorer_comparison.png"),
            report_path("eval/scorer_comparison.html"),
        ]
    return targets


# Evaluation stage (evaluate_slide, pool_metrics).
def evaluated_slides():
    """Annotated slides of the evaluation splits, in sheet order."""
    return annotated_slides(*CONFIG.evaluation.splits)


def pooled_splits():
    """Splits pooled (each apart, into its pooled_path folder): pool_splits that have annotated slides."""
    return [s for s in CONFIG.evaluation.pool_splits if annotated_slides(s)]


def pooled_slides():
    """Evaluated slides that are pooled (into their split's pooled_path folder)."""
    return annotated_slides(*pooled_splits())


# With several detectors, evaluate_slide also scores each detector alone at the pixels it samples of the fused maps,
# from what fuse_maps fuses (each detector's d² map, maps.json and τ file), so the pooled metrics hold each detector
# beside the fused score. With one there is nothing to compare, and its job keeps exactly its inputs and params.
def detector_eval_inputs():
    """evaluate_slide's inputs for scoring each detector alone (`input: **detector_eval_inputs()`)."""
    if not FUSED:
        return {}
    return {
        "detector_d2": each_detector("maps/mahalanobis_d2.tif"),
        "detector_maps": each_detector("maps.json"),
        "detector_thresholds": [threshold_file(d) for d in DETECTOR_NAMES],
    }


def detector_eval_params():
    """evaluate_slide's params for scoring each detector alone: the detectors' names, in the inputs' order."""
    return {"detector_names": DETECTOR_NAMES} if FUSED else {}


def pooled_inputs(name):
    """Input function: per-slide evaluation outputs (grid.parquet, metrics.json, ...) of one pooled split."""

    def inputs(wildcards):
        return expand(
            eval_path("{name}"), slide=annotated_slides(wildcards.split), name=name
        )

    return inputs


def evaluation_targets():
    """Everything the evaluation stage makes (per evaluated slide, the operating point, pooled per split)."""
    names = [
        "grid.parquet",
        "grid.csv",
        "class_grid.parquet",
        "metrics.json",
        "lesion_grid.parquet",
    ]
    names += ["predicted.geojson", "at_operating_point.json"]
    targets = expand(eval_path("{name}"), slide=evaluated_slides(), name=names)
    if evaluated_slides():
        targets.append(operating_point_path())
    for split in pooled_splits():
        targets += expand(
            pooled_path("{name}"),
            split=split,
            name=["grid.parquet", "grid.csv", "class_grid.parquet", "metrics.json"],
        )
    return targets
