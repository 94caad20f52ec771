# Evaluation stage: the threshold × dilation grid of polygon confusion areas per annotated slide (replacing the
# original's 416-element Dataflow job), all classes and per annotation class / group, and pixel-level AUROC / AP of
# the maps; the operating point chosen on the pooled validation slides; QuPath GeoJSON of the predicted polygons at
# that point; the pooled metrics per split (validation and test apart). Every rule here reads the slide's final maps
# (final_map_file: the one detector's, or the fused maps of several); with several, evaluate_slide also scores each
# detector alone beside them (detector_eval_inputs).


wildcard_constraints:
    split=r"[A-Za-z0-9_-]+",


rule evaluate_slide:
    """Grids of confusion areas and metrics (all classes, per class / group) and pixel-level AUROC/AP of one
    annotated slide (with several detectors, of each detector alone too)."""
    input:
        **detector_eval_inputs(),
        kde=final_map_file("maps/kde.tif"),
        flags=final_map_file("maps/flags.tif"),
        mahalanobis_d2=final_map_file("maps/mahalanobis_d2.tif"),
        anomaly_map=final_map_file("maps/anomaly_map.tif"),
        maps=final_map_file("maps.json"),
        patches=tissue_grid("patches.parquet"),
        qc=tissue_grid("qc.json"),
        annotations=annotation_file,
    output:
        grid=eval_path("grid.parquet"),
        csv=eval_path("grid.csv"),
        class_grid=eval_path("class_grid.parquet"),
        metrics=eval_path("metrics.json"),
        pixels=eval_path("pixels.parquet"),
        lesion_grid=eval_path("lesion_grid.parquet"),
    log:
        log_path("evaluate_slide", "{slide}"),
    benchmark:
        bench_path("evaluate_slide", "{slide}")
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
        **detector_eval_params(),
    script:
        "../../scripts/evaluate_slide.py"


rule choose_operating_point:
    """The threshold × dilation cell for every evaluated slide: best F1 on the pooled validation slides (normal-only
    ones included) within the budget of normal tissue inside the polygons, or the configured fixed cell (the JSON
    says which, and why)."""
    input:
        grids=expand(eval_path("grid.parquet"), slide=annotated_slides("validation")),
    output:
        operating_point_path(),
    log:
        log_path("choose_operating_point", "all"),
    benchmark:
        bench_path("choose_operating_point", "all")
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
        kde=final_map_file("maps/kde.tif"),
        maps=final_map_file("maps.json"),
        patches=tissue_grid("patches.parquet"),
        qc=tissue_grid("qc.json"),
        annotations=annotation_file,
        operating_point=operating_point_path(),
    output:
        geojson=eval_path("predicted.geojson"),
        metrics=eval_path("at_operating_point.json"),
    log:
        log_path("export_predictions", "{slide}"),
    benchmark:
        bench_path("export_predictions", "{slide}")
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
        operating_point=operating_point_path(),
    output:
        grid=pooled_path("grid.parquet"),
        csv=report(
            pooled_path("grid.csv"),
            caption="../report/eval_pooled_grid.rst",
            category="Evaluation",
            labels={"slide": "pooled {split}", "table": "threshold × dilation grid"},
        ),
        class_grid=pooled_path("class_grid.parquet"),
        metrics=pooled_path("metrics.json"),
    log:
        log_path("pool_metrics", "{split}"),
    benchmark:
        bench_path("pool_metrics", "{split}")
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
