# Calibration stage, per detector: the Gaussian of reconstruction errors on the calibrate slides (fit_error_distribution), the
# dynamic threshold on the threshold and validation slides (fit_threshold), then one SavedModel with both baked in
# (export_model).
# fit_error_distribution and fit_threshold run the generator over every patch: they ask for resources.gpus.calibration
# GPUs and split each batch over them (MirroredStrategy; calibration.batch_size must divide by the count, checked at
# parse time). export_model only traces and saves the graph, so it asks for one GPU whatever the count.


rule fit_error_distribution:
    """Mean and covariance (calibration.covariance: shrunk or sample) of the scorer's per-pixel features (calibration.scorer), streamed exactly over the calibrate slides (and stain.calibration_copies appearance-jittered copies of them), and the one-sided directions of d² (calibration.one_sided)."""
    input:
        model_json=model_path("model.json"),
        weights=model_path("generator.weights.h5"),
        manifests=manifests("calibrate"),
    output:
        json=calibration_path("error_distribution.json"),
    log:
        log_path("fit_error_distribution", "{detector}"),
    benchmark:
        bench_path("fit_error_distribution", "{detector}")
    conda:
        "../../envs/tensorflow.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=CONFIG.resources.gpus.calibration,
    params:
        **detector_params(
            "calibration.scorer",
            "calibration.border_px",
            "calibration.batch_size",
            "calibration.error_histogram_bins",
            "calibration.jit_compile",
            "calibration.covariance",
            "calibration.one_sided",
            "scoring",
            "stain.calibration_copies",
            "stain.calibration_jitter",
            "seed",
            "resources.gpus.calibration",
        ),
    script:
        "../../scripts/fit_error_distribution.py"


rule fit_threshold:
    """τ on the threshold and validation slides: over the patches that touch no annotation (mean + k·std or a
    quantile of d²) and, with annotations, supervised (max F-β over all labelled pixels).
    """
    input:
        model_json=model_path("model.json"),
        weights=model_path("generator.weights.h5"),
        error_distribution=calibration_path("error_distribution.json"),
        manifests=manifests(*TAU_SPLITS),
        patch_tables=expand(
            grid_path("patches.parquet"),
            slide=slides_in(*TAU_SPLITS),
            allow_missing=True,
        ),
        annotations=threshold_annotations(),
    output:
        json=calibration_path("threshold.json"),
    log:
        log_path("fit_threshold", "{detector}"),
    benchmark:
        bench_path("fit_threshold", "{detector}")
    conda:
        "../../envs/tensorflow.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=CONFIG.resources.gpus.calibration,
    params:
        **detector_params(
            "calibration.scorer",
            "calibration.border_px",
            "calibration.batch_size",
            "calibration.d2_bins_per_decade",
            "calibration.threshold_method",
            "calibration.k_std",
            "calibration.normal_quantile",
            "calibration.f_beta",
            "calibration.supervised_max_exact_pixels",
            "calibration.annotation_classes",
            "calibration.jit_compile",
            "calibration.one_sided",
            "calibration.slide_standardisation",
            "scoring",
            "resources.gpus.calibration",
        ),
        annotated=annotated_slides(*TAU_SPLITS),
    script:
        "../../scripts/fit_threshold.py"


rule export_model:
    """The detector SavedModel (serving_default: uint8 patches in, named anomaly outputs out) and its model card; μ, Σ⁻¹ and the d² directions come from error_distribution.json, τ from threshold.json."""
    input:
        model_json=model_path("model.json"),
        weights=model_path("generator.weights.h5"),
        error_distribution=calibration_path("error_distribution.json"),
        threshold=calibration_path("threshold.json"),
        calibrate=manifests("calibrate"),
        threshold_manifests=manifests(*TAU_SPLITS),
    output:
        saved_model=directory(export_path("saved_model")),
        card=export_path("model_card.json"),
    log:
        log_path("export_model", "{detector}"),
    benchmark:
        bench_path("export_model", "{detector}")
    conda:
        "../../envs/tensorflow.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=1,
    params:
        **detector_params("export", "scoring", *SCREENING_KEYS),
    script:
        "../../scripts/export_model.py"
