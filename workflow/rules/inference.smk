# Inference stage: each exported detector over each test/threshold slide's tissue patches (its own patch grid) (infer_slide, on
# resources.gpus.inference GPUs, each batch split over them; inference.batch_size must divide by the count), then
# the stitched maps, KDE heat map and report overviews (stitch_maps, CPU). The canvases between the two are sums and
# covered area at the map downsample, on disk (~25 MB per demo slide, ~1.6 GB per 25×25 mm slide at 4 µm/px): temp(),
# deleted once stitch_maps has read them. So re-running stitch_maps (e.g. new KDE settings) re-runs infer_slide too;
# run with `--notemp` to keep the canvases and re-stitch without a GPU.

from proganomaly.maps.names import FLOAT_MAPS, MAP_NAMES, RENDITION_SUFFIX


rule infer_slide:
    """Per-patch scores and disk-backed stitching canvases of one slide."""
    input:
        slide=slide_file,
        patches=grid_path("patches.parquet"),
        model=detector_file("saved_model"),
        stain=stain_estimate,
    output:
        patches=slide_path("patches.parquet"),
        canvas=temp(directory(slide_path("canvas"))),
        json=slide_path("inference.json"),
    log:
        log_path("infer_slide", "{detector}/{slide}"),
    benchmark:
        bench_path("infer_slide", "{detector}/{slide}")
    conda:
        "../../envs/tensorflow.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=CONFIG.resources.gpus.inference,
    params:
        **infer_slide_params(),
        **detector_params("stain.normalisation"),
        mpp=slide_mpp,
    script:
        "../../scripts/infer_slide.py"


rule stitch_maps:
    """Pyramidal TIFF maps of one detector on one slide at the shared map downsample (stitching.map_mpp), the KDE heat
    map and PNG overviews."""
    input:
        canvas=slide_path("canvas"),
        qc=grid_path("qc.json"),
        tissue=tile_path("tissue.png"),
        patches=slide_path("patches.parquet"),
        threshold=threshold_file(),
    output:
        maps=expand(slide_path("maps/{name}.tif"), name=MAP_NAMES, allow_missing=True),
        renditions=expand(
            slide_path("maps/{name}{suffix}"),
            name=FLOAT_MAPS,
            suffix=RENDITION_SUFFIX,
            allow_missing=True,
        ),
        tiles=slide_path("tiles.geojson"),
        overviews=[
            report(
                slide_path(f"overview/{name}.png"),
                caption=f"../report/slide_{name}.rst",
                category="Slide maps",
                subcategory="{slide}",
                labels={"slide": "{slide}", "detector": "{detector}", "map": name},
            )
            for name in MAP_NAMES
        ],
        json=slide_path("maps.json"),
    log:
        log_path("stitch_maps", "{detector}/{slide}"),
    benchmark:
        bench_path("stitch_maps", "{detector}/{slide}")
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=120,
    params:
        **detector_params(
            "stitching.tile_px",
            "stitching.rgb_compression",
            "stitching.overview_max_px",
            "stitching.work_tile_px",
            "stitching.kde.method",
            "stitching.kde.bandwidth_um",
            "stitching.kde.truncate",
            "stitching.kde.min_object_um2",
            "stitching.kde.ceiling",
            "calibration.slide_standardisation",
        ),
    script:
        "../../scripts/stitch_maps.py"


rule slide_maps:
    """Target: every detector's maps, and the final maps, of every mapped slide (validation, test, threshold)."""
    input:
        slide_map_targets(),
