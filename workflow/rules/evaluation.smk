# Evaluation stage: the threshold × dilation grid of polygon confusion areas per annotated slide (replacing the
# original's 416-element Dataflow job), pixel-level AUROC / AP of the maps, QuPath GeoJSON of the predicted
# polygons, and the pooled metrics over slides.


rule evaluate_slide:
    """Grid of confusion areas and metrics, pixel-level AUROC/AP and predicted polygons for one annotated slide."""
    input:
        kde="results/slides/{slide}/maps/kde.tif",
        mahalanobis_d2="results/slides/{slide}/maps/mahalanobis_d2.tif",
        anomaly_map="results/slides/{slide}/maps/anomaly_map.tif",
        maps="results/slides/{slide}/maps.json",
        patches="results/tiles/{slide}.patches.parquet",
        qc="results/tiles/{slide}.qc.json",
        annotations=annotation_file,
    output:
        grid="results/eval/{slide}/grid.parquet",
        csv="results/eval/{slide}/grid.csv",
        metrics="results/eval/{slide}/metrics.json",
        geojson="results/eval/{slide}/predicted.geojson",
        pixels="results/eval/{slide}/pixels.parquet",
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
            "evaluation.beta",
            "evaluation.annotation_classes",
            "evaluation.annotation_mask_downsample",
            "evaluation.operating_point",
            "evaluation.operating_threshold",
            "evaluation.operating_dilation",
            "evaluation.class_name",
            "evaluation.class_color",
            "evaluation.max_pixels",
            "evaluation.curve_points",
        ),
    script:
        "../../scripts/evaluate_slide.py"


rule pool_metrics:
    """Areas summed per grid cell over the pooled slides, metrics recomputed; pixel AUROC/AP over all their pixels."""
    input:
        grids=pooled_inputs("grid.parquet"),
        metrics=pooled_inputs("metrics.json"),
        pixels=pooled_inputs("pixels.parquet"),
    output:
        grid="results/eval/pooled/grid.parquet",
        csv=report(
            "results/eval/pooled/grid.csv",
            caption="../report/eval_pooled_grid.rst",
            category="Evaluation",
            labels={"slide": "pooled", "table": "threshold × dilation grid"},
        ),
        metrics="results/eval/pooled/metrics.json",
    log:
        "results/logs/pool_metrics/all.log",
    benchmark:
        "results/benchmarks/pool_metrics/all.tsv"
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        # pool_splits chooses the pooled slides (the inputs), so the pooled metrics follow it.
        **config_params(
            "evaluation.pool_splits", "evaluation.beta", "evaluation.curve_points"
        ),
    script:
        "../../scripts/pool_metrics.py"
