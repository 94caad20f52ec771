# Records stage: per detector, per-resolution TFRecords of the slides whose split some rule reads (RECORD_SPLITS); a
# test slide matches no write_records job, so nothing can ask for its records by mistake.


rule write_records:
    input:
        slide=slide_file,
        patches=grid_path("patches.parquet"),
        qc=grid_path("qc.json"),
        stain=stain_estimate,
    output:
        records=directory(records_path()),
        manifest=manifest_path(),
    log:
        log_path("write_records", "{detector}/{slide}"),
    benchmark:
        bench_path("write_records", "{detector}/{slide}")
    wildcard_constraints:
        slide=RECORD_SLIDES,
    conda:
        "../../envs/tensorflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        **detector_params("tiling.patch_size_px", "records", "stain.normalisation"),
    script:
        "../../scripts/write_records.py"
