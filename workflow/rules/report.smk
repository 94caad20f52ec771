# Report stage: figures and tables for `snakemake --report results/report.zip`, read from the other stages' output
# files only. A figure is a target only when a rule of this workflow produces its inputs, so the report builds from
# whatever stages exist (report_targets() in common.smk).

# Evaluated slides and the pooled splits (the evaluation stage's choice, not ours).
EVAL_SETS = evaluated_slides() + [pooled_set(s) for s in pooled_splits()]


wildcard_constraints:
    evalset="|".join(re.escape(s) for s in EVAL_SETS),


rule export_config:
    """The validated configuration (schema defaults filled in) as YAML."""
    output:
        report(
            report_path("software/config.yaml"),
            caption="../report/config.rst",
            category="Software and configuration",
            labels={"item": "configuration"},
        ),
    log:
        log_path("export_config", "all"),
    benchmark:
        bench_path("export_config", "all")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        **config_params(*config),
    script:
        "../../scripts/export_config.py"


rule export_software:
    """Per conda env: pinned versions and the versions this run actually imported."""
    input:
        envs=ENV_FILES,
    output:
        html=report(
            report_path("software/environments.html"),
            caption="../report/environments.rst",
            category="Software and configuration",
            labels={"item": "package versions"},
        ),
        tsv=report_path("software/environments.tsv"),
    log:
        log_path("export_software", "all"),
    benchmark:
        bench_path("export_software", "all")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../../scripts/export_software.py"


rule plot_qc:
    """One detector's patches per slide and resolution (records manifests); the slide table (sheet and tiling QC)."""
    input:
        sheet=config["slides"],
        qc=expand(grid_path("qc.json"), slide=list(SLIDES.index), allow_missing=True),
        manifests=manifests(*RECORD_SPLITS),
    output:
        counts=report(
            report_path("qc/{detector}/patch_counts.png"),
            caption="../report/patch_counts.rst",
            category="Data & QC",
            labels={
                "slide": "all",
                "detector": "{detector}",
                "figure": "patch counts",
            },
        ),
        table=report(
            report_path("qc/{detector}/slides.html"),
            caption="../report/slide_table.rst",
            category="Data & QC",
            labels={"slide": "all", "detector": "{detector}", "figure": "slide table"},
        ),
    log:
        log_path("plot_qc", "{detector}"),
    benchmark:
        bench_path("plot_qc", "{detector}")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/plot_qc.py"


rule plot_training:
    """One detector's loss curves per growth phase, held-out reconstruction error and throughput (samples:
    train_reconstruction)."""
    input:
        loss_log=model_path("loss_log.csv"),
        heldout=model_path("heldout_error.csv"),
        training=model_path("training.json"),
    output:
        losses=report(
            report_path("training/{detector}/losses.png"),
            caption="../report/plot_training_losses.rst",
            category="Training",
            labels={"detector": "{detector}", "figure": "losses"},
        ),
        heldout=report(
            report_path("training/{detector}/heldout.png"),
            caption="../report/plot_training_heldout.rst",
            category="Training",
            labels={"detector": "{detector}", "figure": "held-out error"},
        ),
        throughput=report(
            report_path("training/{detector}/throughput.png"),
            caption="../report/plot_training_throughput.rst",
            category="Training",
            labels={"detector": "{detector}", "figure": "images per second"},
        ),
    log:
        log_path("plot_training", "{detector}"),
    benchmark:
        bench_path("plot_training", "{detector}")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        **config_params("report.loss_smoothing"),
    script:
        "../../scripts/plot_training.py"


rule plot_calibration:
    """One detector's per-channel error distribution; d² histogram with τ; the supervised F-β curve (annotated
    threshold slides)."""
    input:
        error_distribution=calibration_path("error_distribution.json"),
        threshold=calibration_path("threshold.json"),
    output:
        error_distribution=report(
            report_path("calibration/{detector}/error_distribution.png"),
            caption="../report/error_distribution.rst",
            category="Calibration",
            labels={"detector": "{detector}", "figure": "error distribution"},
        ),
        d2=report(
            report_path("calibration/{detector}/d2_histogram.png"),
            caption="../report/d2_histogram.rst",
            category="Calibration",
            labels={"detector": "{detector}", "figure": "d² histogram"},
        ),
        fbeta=(
            [
                report(
                    report_path("calibration/{detector}/fbeta_curve.png"),
                    caption="../report/fbeta_curve.rst",
                    category="Calibration",
                    labels={"detector": "{detector}", "figure": "F-β curve"},
                )
            ]
            if annotated_slides(*TAU_SPLITS)
            else []
        ),
    log:
        log_path("plot_calibration", "{detector}"),
    benchmark:
        bench_path("plot_calibration", "{detector}")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/plot_calibration.py"


rule plot_slide:
    """Thumbnail, d² map, KDE heat map and predicted polygons against annotations of one slide."""
    input:
        thumbnail=final_map_file("maps/thumbnail.tif"),
        d2=final_map_file("maps/mahalanobis_d2.tif"),
        kde=final_map_file("maps/kde.tif"),
        maps=final_map_file("maps.json"),
        threshold=final_map_file("threshold.json"),
        annotations=annotation_file,
        predicted=slide_prediction,
        metrics=slide_metrics,
    output:
        report(
            report_path("slides/{slide}.png"),
            caption="../report/slide_panels.rst",
            category="Slide maps",
            subcategory="{slide}",
            labels={"slide": "{slide}", "map": "summary panels"},
        ),
    log:
        log_path("plot_slide", "{slide}"),
    benchmark:
        bench_path("plot_slide", "{slide}")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    params:
        **config_params("report.map_max_px"),
    script:
        "../../scripts/plot_slide.py"


rule plot_overlay:
    """Every mapped slide (validation, test, threshold): thumbnail, KDE heat map, predicted and true polygons, legend
    and scale bar."""
    input:
        thumbnail=final_map_file("maps/thumbnail.tif"),
        kde=final_map_file("maps/kde.tif"),
        maps=final_map_file("maps.json"),
        annotations=annotation_file,
        predicted=slide_prediction,
        metrics=slide_metrics,
    output:
        report(
            report_path("overlays/{slide}.png"),
            caption="../report/slide_overlay.rst",
            category="Slide maps",
            subcategory="{slide}",
            labels={"slide": "{slide}", "map": "overlay"},
        ),
    log:
        log_path("plot_overlay", "{slide}"),
    benchmark:
        bench_path("plot_overlay", "{slide}")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    params:
        **config_params("report.map_max_px"),
        split=lambda wildcards: sheet_row(SPLIT_OF, wildcards.slide),
    script:
        "../../scripts/plot_overlay.py"


rule plot_eval_grid:
    """F1 and IoU over the threshold × dilation grid of one slide (or pooled), best cell and operating point
    marked."""
    input:
        grid=eval_set_path("grid.parquet"),
        operating_point=operating_point_path(),
    output:
        report(
            report_path("eval/{evalset}.grid.png"),
            caption="../report/eval_grid.rst",
            category="Evaluation",
            labels={"slide": "{evalset}", "figure": "F1 / IoU grid"},
        ),
    log:
        log_path("plot_eval_grid", "{evalset}"),
    benchmark:
        bench_path("plot_eval_grid", "{evalset}")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/plot_eval_grid.py"


rule plot_eval_summary:
    """Pixel-level ROC and precision–recall curves of every score map, and the metrics table."""
    input:
        grids=[eval_set_path("grid.parquet", s) for s in EVAL_SETS],
        metrics=[eval_set_path("metrics.json", s) for s in EVAL_SETS],
        at_point=expand(eval_path("at_operating_point.json"), slide=evaluated_slides()),
    output:
        curves=report(
            report_path("eval/pixel_curves.png"),
            caption="../report/roc_pr.rst",
            category="Evaluation",
            labels={"slide": "all", "figure": "ROC and precision-recall"},
        ),
        table=report(
            report_path("eval/metrics.html"),
            caption="../report/metrics_table.rst",
            category="Evaluation",
            labels={"slide": "all", "figure": "metrics table"},
        ),
        csv=report(
            report_path("eval/metrics.csv"),
            caption="../report/metrics_csv.rst",
            category="Evaluation",
            labels={"slide": "all", "figure": "all metrics (CSV)"},
        ),
    log:
        log_path("plot_eval_summary", "all"),
    benchmark:
        bench_path("plot_eval_summary", "all")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        names=EVAL_SETS,
        slides=evaluated_slides(),
        split_of={s: SPLIT_OF[s] for s in evaluated_slides()},
    script:
        "../../scripts/plot_eval_summary.py"


rule plot_eval_classes:
    """Pixel-level ROC and precision–recall curves per annotation class and per group, one split pooled."""
    input:
        metrics=pooled_path("metrics.json"),
    output:
        classes=report(
            report_path("eval/pooled/{split}.class_curves.png"),
            caption="../report/class_curves.rst",
            category="Evaluation",
            labels={"slide": "pooled {split}", "figure": "ROC and PR per class"},
        ),
        groups=report(
            report_path("eval/pooled/{split}.group_curves.png"),
            caption="../report/group_curves.rst",
            category="Evaluation",
            labels={"slide": "pooled {split}", "figure": "ROC and PR per group"},
        ),
    log:
        log_path("plot_eval_classes", "{split}"),
    benchmark:
        bench_path("plot_eval_classes", "{split}")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/plot_eval_classes.py"


rule plot_eval_froc:
    """Lesion sensitivity against false-positive area per mm² of normal tissue over the KDE thresholds (at the
    operating dilation), one split pooled."""
    input:
        metrics=pooled_path("metrics.json"),
    output:
        report(
            report_path("eval/pooled/{split}.froc.png"),
            caption="../report/froc.rst",
            category="Evaluation",
            labels={"slide": "pooled {split}", "figure": "FROC"},
        ),
    log:
        log_path("plot_eval_froc", "{split}"),
    benchmark:
        bench_path("plot_eval_froc", "{split}")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        **config_params("evaluation.lesion_min_overlap"),
    script:
        "../../scripts/plot_eval_froc.py"


rule plot_class_metrics:
    """Per-class metrics table: pixel AUROC/AP per class and group, oracle best-cell F1, metrics at the operating
    point, per pooled split."""
    input:
        metrics=expand(pooled_path("metrics.json"), split=pooled_splits()),
        operating_point=operating_point_path(),
    output:
        table=report(
            report_path("eval/class_metrics.html"),
            caption="../report/class_metrics.rst",
            category="Evaluation",
            labels={"slide": "pooled", "figure": "per-class metrics table"},
        ),
        csv=report_path("eval/class_metrics.csv"),
    log:
        log_path("plot_class_metrics", "all"),
    benchmark:
        bench_path("plot_class_metrics", "all")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        splits=pooled_splits(),
    script:
        "../../scripts/plot_class_metrics.py"


rule plot_scorer_comparison:
    """The detection benchmark's scorer comparison (docs/detection-benchmark.json): pixel AUROC / AP per scorer,
    variant and anomaly group, validation and test, mean ± sd over seeds."""
    input:
        benchmark=SCORER_BENCHMARK,
    output:
        figure=report(
            report_path("eval/scorer_comparison.png"),
            caption="../report/scorer_comparison.rst",
            category="Evaluation",
            labels={"slide": "benchmark", "figure": "scorer comparison"},
        ),
        table=report(
            report_path("eval/scorer_comparison.html"),
            caption="../report/scorer_comparison.rst",
            category="Evaluation",
            labels={"slide": "benchmark", "figure": "scorer comparison table"},
        ),
    log:
        log_path("plot_scorer_comparison", "all"),
    benchmark:
        bench_path("plot_scorer_comparison", "all")
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        **config_params("calibration.scorer", "scoring.combined.scorers"),
    script:
        "../../scripts/plot_scorer_comparison.py"


rule report_figures:
    """Target: every report figure that the stages present can feed (then `snakemake --report`)."""
    input:
        report_targets(),
