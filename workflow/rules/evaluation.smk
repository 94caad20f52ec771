# Evaluation stage: the threshold × dilation grid of polygon confusion areas per annotated slide (replacing the
# original's 416-element Dataflow job), all classes and per annotation class / group, and pixel-level AUROC / AP of
# the maps; the operating point chosen on the pooled validation slides; QuPath GeoJSON of the predicted polygons at
# that point; the pooled metrics per split (validation and test apart).


wildcard_constraints:
    split=r"[A-Za-z0-9_-]+",


rule evaluate_slide:
    """Grids of confusion areas and metrics (all classes, per class / group) and pixel-level AUROC/AP of one
    annotated slide."""
    input:
        kde="results/slides/{slide}/maps/kde.tif",
        flags="results/slides/{slide}/maps/flags.tif",
        mahalanobis_d2="results/slides/{slide}/maps/mahalanobis_d2.tif",
        anomaly_map="results/slides/{slide}/maps/anomaly_map.tif",
        maps="results/slides/{slide}/maps.json",
        patches="results/tiles/{slide}.patches.parquet",
        qc="results/tiles/{slide}.qc.json",
        annotations=annotation_file,
    output:
        grid="results/eval/{slide}/grid.parquet",
        csv="results/eval/{slide}/grid.csv",
        class_grid="results/eval/{slide}/class_grid.parquet",
        metrics="results/eval/{slide}/metrics.json",
        pixels="results/eval/{slide}/pixels.parquet",
        lesion_grid="results/eval/{slide}/lesion_grid.parquet",
    log:
        "results/logs/evaluate_slide/{slide}.log",
    benchmark:
        "results/benchmarks/evaluate_slide/{slide}.tsv"
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        **config_params(
            "seed",
            "evaluation.thresholds",
            "evaluation.dilations",
            "evaluation.dilation_mode",
            "evaluation.dilation_origin",
            "evaluation.contour_tolerance_px",
            "evaluation.grid_method",
            "evaluation.beta",
            "evaluation.annotation_classes",
            "evaluation.annotation_mask_downsample",
            "evaluation.max_pixels",
            "evaluation.curve_points",
        ),
    script:
        "../../scripts/evaluate_slide.py"


rule choose_operating_point:
    """The threshold × dilation cell for every evaluated slide: best F1 on the pooled validation slides (normal-only
    ones included) within the budget of normal tissue inside the polygons, or the configured fixed cell (the JSON
    says which, and why)."""
    input:
        grids=expand(
            "results/eval/{slide}/grid.parquet", slide=annotated_slides("validation")
        ),
    output:
        "results/eval/operating_point.json",
    log:
        "results/logs/choose_operating_point/all.log",
    benchmark:
        "results/benchmarks/choose_operating_point/all.tsv"
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        **config_params(
            "evaluation.operating_point",
            "evaluation.operating_threshold",
            "evaluation.operating_dilation",
            "evaluation.fp_budget",
            "evaluation.beta",
        ),
    script:
        "../../scripts/choose_operating_point.py"


rule export_predictions:
    """Predicted polygons of one evaluated slide at the chosen operating point (QuPath GeoJSON), and its areas and
    metrics there (all classes, per class / group)."""
    input:
        kde="results/slides/{slide}/maps/kde.tif",
        maps="results/slides/{slide}/maps.json",
        patches="results/tiles/{slide}.patches.parquet",
        qc="results/tiles/{slide}.qc.json",
        annotations=annotation_file,
        operating_point="results/eval/operating_point.json",
    output:
        geojson="results/eval/{slide}/predicted.geojson",
        metrics="results/eval/{slide}/at_operating_point.json",
    log:
        "results/logs/export_predictions/{slide}.log",
    benchmark:
        "results/benchmarks/export_predictions/{slide}.tsv"
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        **config_params(
            "evaluation.dilation_mode",
            "evaluation.dilation_origin",
            "evaluation.contour_tolerance_px",
            "evaluation.beta",
            "evaluation.annotation_classes",
            "evaluation.annotation_mask_downsample",
            "evaluation.class_name",
            "evaluation.class_color",
            "evaluation.lesion_min_overlap",
        ),
    script:
        "../../scripts/export_predictions.py"


rule pool_metrics:
    """One split's evaluated slides pooled: areas summed per grid cell (all classes, per class / group), metrics
    recomputed; pixel AUROC/AP over all their pixels; areas at the operating point summed.
    """
    input:
        grids=pooled_inputs("grid.parquet"),
        class_grids=pooled_inputs("class_grid.parquet"),
        metrics=pooled_inputs("metrics.json"),
        pixels=pooled_inputs("pixels.parquet"),
        at_point=pooled_inputs("at_operating_point.json"),
        lesion_grids=pooled_inputs("lesion_grid.parquet"),
        operating_point="results/eval/operating_point.json",
    output:
        grid="results/eval/pooled/{split}/grid.parquet",
        csv=report(
            "results/eval/pooled/{split}/grid.csv",
            caption="../report/eval_pooled_grid.rst",
            category="Evaluation",
            labels={"slide": "pooled {split}", "table": "threshold × dilation grid"},
        ),
        class_grid="results/eval/pooled/{split}/class_grid.parquet",
        metrics="results/eval/pooled/{split}/metrics.json",
    log:
        "results/logs/pool_metrics/{split}.log",
    benchmark:
        "results/benchmarks/pool_metrics/{split}.tsv"
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        # pool_splits chooses the pooled splits (the jobs), so the pooled metrics follow it.
        **config_params(
            "evaluation.pool_splits",
            "evaluation.beta",
            "evaluation.curve_points",
            "evaluation.lesion_min_overlap",
        ),
    script:
        "../../scripts/pool_metrics.py"
