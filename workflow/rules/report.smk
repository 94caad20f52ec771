# Report stage: figures and tables for `snakemake --report results/report.zip`, read from the other stages' output
# files only. A figure is a target only when a rule of this workflow produces its inputs, so the report builds from
# whatever stages exist (report_targets() in common.smk).

# Evaluated slides and the pooled splits (the evaluation stage's choice, not ours).
EVAL_SETS = evaluated_slides() + [f"pooled/{s}" for s in pooled_splits()]


wildcard_constraints:
    evalset="|".join(re.escape(s) for s in EVAL_SETS),


rule export_config:
    """The validated configuration (schema defaults filled in) as YAML."""
    output:
        report(
            "results/report/software/config.yaml",
            caption="../report/config.rst",
            category="Software and configuration",
            labels={"item": "configuration"},
        ),
    log:
        "results/logs/export_config/all.log",
    benchmark:
        "results/benchmarks/export_config/all.tsv"
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
            "results/report/software/environments.html",
            caption="../report/environments.rst",
            category="Software and configuration",
            labels={"item": "package versions"},
        ),
        tsv="results/report/software/environments.tsv",
    log:
        "results/logs/export_software/all.log",
    benchmark:
        "results/benchmarks/export_software/all.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../../scripts/export_software.py"


rule plot_qc:
    """Patches per slide and resolution (records manifests); the slide table (sheet and tiling QC)."""
    input:
        sheet=config["slides"],
        qc=expand("results/tiles/{slide}.qc.json", slide=list(SLIDES.index)),
        manifests=manifests(*RECORD_SPLITS),
    output:
        counts=report(
            "results/report/qc/patch_counts.png",
            caption="../report/patch_counts.rst",
            category="Data & QC",
            labels={"slide": "all", "figure": "patch counts"},
        ),
        table=report(
            "results/report/qc/slides.html",
            caption="../report/slide_table.rst",
            category="Data & QC",
            labels={"slide": "all", "figure": "slide table"},
        ),
    log:
        "results/logs/plot_qc/all.log",
    benchmark:
        "results/benchmarks/plot_qc/all.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/plot_qc.py"


rule plot_training:
    """Loss curves per growth phase, held-out reconstruction error and throughput (samples: train_reconstruction)."""
    input:
        loss_log="results/model/loss_log.csv",
        heldout="results/model/heldout_error.csv",
        training="results/model/training.json",
    output:
        losses=report(
            "results/report/training/losses.png",
            caption="../report/plot_training_losses.rst",
            category="Training",
            labels={"figure": "losses"},
        ),
        heldout=report(
            "results/report/training/heldout.png",
            caption="../report/plot_training_heldout.rst",
            category="Training",
            labels={"figure": "held-out error"},
        ),
        throughput=report(
            "results/report/training/throughput.png",
            caption="../report/plot_training_throughput.rst",
            category="Training",
            labels={"figure": "images per second"},
        ),
    log:
        "results/logs/plot_training/all.log",
    benchmark:
        "results/benchmarks/plot_training/all.tsv"
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
    """Per-channel error distribution; d² histogram with τ; the supervised F-β curve (annotated threshold slides)."""
    input:
        error_distribution="results/calibration/error_distribution.json",
        threshold="results/calibration/threshold.json",
    output:
        error_distribution=report(
            "results/report/calibration/error_distribution.png",
            caption="../report/error_distribution.rst",
            category="Calibration",
            labels={"figure": "error distribution"},
        ),
        d2=report(
            "results/report/calibration/d2_histogram.png",
            caption="../report/d2_histogram.rst",
            category="Calibration",
            labels={"figure": "d² histogram"},
        ),
        fbeta=(
            [
                report(
                    "results/report/calibration/fbeta_curve.png",
                    caption="../report/fbeta_curve.rst",
                    category="Calibration",
                    labels={"figure": "F-β curve"},
                )
            ]
            if annotated_slides(*TAU_SPLITS)
            else []
        ),
    log:
        "results/logs/plot_calibration/all.log",
    benchmark:
        "results/benchmarks/plot_calibration/all.tsv"
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
        thumbnail="results/slides/{slide}/maps/thumbnail.tif",
        d2="results/slides/{slide}/maps/mahalanobis_d2.tif",
        kde="results/slides/{slide}/maps/kde.tif",
        maps="results/slides/{slide}/maps.json",
        threshold=threshold_file(),
        annotations=annotation_file,
        predicted=slide_prediction,
        metrics=slide_metrics,
    output:
        report(
            "results/report/slides/{slide}.png",
            caption="../report/slide_panels.rst",
            category="Slide maps",
            subcategory="{slide}",
            labels={"slide": "{slide}", "map": "summary panels"},
        ),
    log:
        "results/logs/plot_slide/{slide}.log",
    benchmark:
        "results/benchmarks/plot_slide/{slide}.tsv"
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
        thumbnail="results/slides/{slide}/maps/thumbnail.tif",
        kde="results/slides/{slide}/maps/kde.tif",
        maps="results/slides/{slide}/maps.json",
        annotations=annotation_file,
        predicted=slide_prediction,
        metrics=slide_metrics,
    output:
        report(
            "results/report/overlays/{slide}.png",
            caption="../report/slide_overlay.rst",
            category="Slide maps",
            subcategory="{slide}",
            labels={"slide": "{slide}", "map": "overlay"},
        ),
    log:
        "results/logs/plot_overlay/{slide}.log",
    benchmark:
        "results/benchmarks/plot_overlay/{slide}.tsv"
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
        grid="results/eval/{evalset}/grid.parquet",
        operating_point="results/eval/operating_point.json",
    output:
        report(
            "results/report/eval/{evalset}.grid.png",
            caption="../report/eval_grid.rst",
            category="Evaluation",
            labels={"slide": "{evalset}", "figure": "F1 / IoU grid"},
        ),
    log:
        "results/logs/plot_eval_grid/{evalset}.log",
    benchmark:
        "results/benchmarks/plot_eval_grid/{evalset}.tsv"
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
        grids=expand("results/eval/{name}/grid.parquet", name=EVAL_SETS),
        metrics=expand("results/eval/{name}/metrics.json", name=EVAL_SETS),
        at_point=expand(
            "results/eval/{slide}/at_operating_point.json", slide=evaluated_slides()
        ),
    output:
        curves=report(
            "results/report/eval/pixel_curves.png",
            caption="../report/roc_pr.rst",
            category="Evaluation",
            labels={"slide": "all", "figure": "ROC and precision-recall"},
        ),
        table=report(
            "results/report/eval/metrics.html",
            caption="../report/metrics_table.rst",
            category="Evaluation",
            labels={"slide": "all", "figure": "metrics table"},
        ),
        csv=report(
            "results/report/eval/metrics.csv",
            caption="../report/metrics_csv.rst",
            category="Evaluation",
            labels={"slide": "all", "figure": "all metrics (CSV)"},
        ),
    log:
        "results/logs/plot_eval_summary/all.log",
    benchmark:
        "results/benchmarks/plot_eval_summary/all.tsv"
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
        metrics="results/eval/pooled/{split}/metrics.json",
    output:
        classes=report(
            "results/report/eval/pooled/{split}.class_curves.png",
            caption="../report/class_curves.rst",
            category="Evaluation",
            labels={"slide": "pooled {split}", "figure": "ROC and PR per class"},
        ),
        groups=report(
            "results/report/eval/pooled/{split}.group_curves.png",
            caption="../report/group_curves.rst",
            category="Evaluation",
            labels={"slide": "pooled {split}", "figure": "ROC and PR per group"},
        ),
    log:
        "results/logs/plot_eval_classes/{split}.log",
    benchmark:
        "results/benchmarks/plot_eval_classes/{split}.tsv"
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
        metrics="results/eval/pooled/{split}/metrics.json",
    output:
        report(
            "results/report/eval/pooled/{split}.froc.png",
            caption="../report/froc.rst",
            category="Evaluation",
            labels={"slide": "pooled {split}", "figure": "FROC"},
        ),
    log:
        "results/logs/plot_eval_froc/{split}.log",
    benchmark:
        "results/benchmarks/plot_eval_froc/{split}.tsv"
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
        metrics=expand(
            "results/eval/pooled/{split}/metrics.json", split=pooled_splits()
        ),
        operating_point="results/eval/operating_point.json",
    output:
        table=report(
            "results/report/eval/class_metrics.html",
            caption="../report/class_metrics.rst",
            category="Evaluation",
            labels={"slide": "pooled", "figure": "per-class metrics table"},
        ),
        csv="results/report/eval/class_metrics.csv",
    log:
        "results/logs/plot_class_metrics/all.log",
    benchmark:
        "results/benchmarks/plot_class_metrics/all.tsv"
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
            "results/report/eval/scorer_comparison.png",
            caption="../report/scorer_comparison.rst",
            category="Evaluation",
            labels={"slide": "benchmark", "figure": "scorer comparison"},
        ),
        table=report(
            "results/report/eval/scorer_comparison.html",
            caption="../report/scorer_comparison.rst",
            category="Evaluation",
            labels={"slide": "benchmark", "figure": "scorer comparison table"},
        ),
    log:
        "results/logs/plot_scorer_comparison/all.log",
    benchmark:
        "results/benchmarks/plot_scorer_comparison/all.tsv"
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
