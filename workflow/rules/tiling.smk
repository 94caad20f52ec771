# Tiling stage: tissue mask and patch grid per slide (tile_slide), then per-resolution TFRecords (write_records).


rule tile_slide:
    """Tissue mask on a thumbnail, the table of tissue patches (level-0 coordinates) and the stain estimate of one
    slide."""
    input:
        slide=slide_file,
    output:
        patches="results/tiles/{slide}.patches.parquet",
        qc="results/tiles/{slide}.qc.json",
        mask=report(
            "results/tiles/{slide}.mask.png",
            caption="../report/tissue_mask.rst",
            category="Data & QC",
            labels={"slide": "{slide}", "figure": "tissue mask"},
        ),
        tissue="results/tiles/{slide}.tissue.png",
        stain="results/tiles/{slide}.stain.json",
    log:
        "results/logs/tile_slide/{slide}.log",
    benchmark:
        "results/benchmarks/tile_slide/{slide}.tsv"
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
