# Tiling stage: tissue mask and patch grid per slide (tile_slide), then per-resolution TFRecords (write_records).


rule tile_slide:
    """Tissue mask on a thumbnail, the table of tissue patches (level-0 coordinates) and the stain estimate of one
    slide."""
    input:
        slide=slide_file,
    output:
        patches=tile_path("patches.parquet"),
        qc=tile_path("qc.json"),
        mask=report(
            tile_path("mask.png"),
            caption="../report/tissue_mask.rst",
            category="Data & QC",
            labels={"slide": "{slide}", "figure": "tissue mask"},
        ),
        tissue=tile_path("tissue.png"),
        stain=tile_path("stain.json"),
    log:
        log_path("tile_slide", "{slide}"),
    benchmark:
        bench_path("tile_slide", "{slide}")
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        **config_params("tiling"),
        mpp=slide_mpp,
    script:
        "../../scripts/tile_slide.py"
