# Tiling stage: per slide, one tissue mask and each detector's patch grid on it (tile_slide); per-resolution
# TFRecords per detector and slide (write_records, records.smk).


rule tile_slide:
    """Tissue mask on a thumbnail, each detector's table of tissue patches (level-0 coordinates) and the stain
    estimate of one slide."""
    input:
        slide=slide_file,
    output:
        patches=expand(
            grid_path("patches.parquet"), detector=DETECTOR_NAMES, allow_missing=True
        ),
        qc=expand(grid_path("qc.json"), detector=DETECTOR_NAMES, allow_missing=True),
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
        # the whole top-level tiling: its tissue keys are every detector's, and its grid keys the base that each
        # detector's grid (grids) is merged over
        **config_params("tiling"),
        grids=tile_grids(),
        mpp=slide_mpp,
    script:
        "../../scripts/tile_slide.py"
