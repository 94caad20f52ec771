# Fusion stage, with two or more detectors: each detector's stitched d² (its slide's robust z when it standardises
# per slide) becomes an upper-tail probability under its own normal calibration pixels; fusion.method combines them
# per pixel into the fused score, -log10 p. fit_fusion fits the fused τ on the normal pixels of the threshold and
# validation slides; fuse_maps writes each slide's final maps (final_map_file), which evaluation, QuPath export and
# the report read as they would one detector's.

from proganomaly.maps.names import FLOAT_MAPS, MAP_NAMES, RENDITION_SUFFIX


rule fit_fusion:
    """The fused τ: the fusion.normal_quantile of the fused score over the normal pixels of the threshold and
    validation slides."""
    input:
        d2=tau_slide_maps("maps/mahalanobis_d2.tif"),
        maps=tau_slide_maps("maps.json"),
        thresholds=[threshold_file(d) for d in DETECTOR_NAMES],
        tissue=[
            slide_path("maps/tissue.tif", detector=DETECTOR_NAMES[0], slide=s)
            for s in slides_in(*TAU_SPLITS)
        ],
        annotations=[ANNOTATIONS_OF[s] for s in annotated_slides(*TAU_SPLITS)],
    output:
        fusion_path("threshold.json"),
    log:
        log_path("fit_fusion", "fit_fusion"),
    benchmark:
        bench_path("fit_fusion", "fit_fusion")
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        **config_params("fusion"),
        tau_slides=slides_in(*TAU_SPLITS),
        detector_names=DETECTOR_NAMES,
        annotations={s: ANNOTATIONS_OF[s] or None for s in slides_in(*TAU_SPLITS)},
    script:
        "../../scripts/fit_fusion.py"


rule fuse_maps:
    """One slide's final maps from its detectors' maps: fused score, flags above the fused τ, KDE, overviews."""
    input:
        d2=each_detector("maps/mahalanobis_d2.tif"),
        maps=each_detector("maps.json"),
        coverage=each_detector("maps/coverage.tif"),
        tiles=slide_path("tiles.geojson", detector=DETECTOR_NAMES[0]),
        thresholds=[threshold_file(d) for d in DETECTOR_NAMES],
        fusion=fusion_path("threshold.json"),
    output:
        maps=expand(fused_path("maps/{name}.tif"), name=MAP_NAMES, allow_missing=True),
        renditions=expand(
            fused_path("maps/{name}{suffix}"),
            name=FLOAT_MAPS,
            suffix=RENDITION_SUFFIX,
            allow_missing=True,
        ),
        tiles=fused_path("tiles.geojson"),
        overviews=[
            report(
                fused_path(f"overview/{name}.png"),
                caption=f"../report/slide_{name}.rst",
                category="Slide maps",
                subcategory="{slide}",
                labels={"slide": "{slide}", "detector": "fused", "map": name},
            )
            for name in MAP_NAMES
        ],
        json=fused_path("maps.json"),
    log:
        log_path("fuse_maps", "{slide}"),
    benchmark:
        bench_path("fuse_maps", "{slide}")
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        **config_params(
            "stitching.tile_px",
            "stitching.rgb_compression",
            "stitching.overview_max_px",
            "stitching.work_tile_px",
            "stitching.kde.method",
            "stitching.kde.bandwidth_um",
            "stitching.kde.truncate",
            "stitching.kde.min_object_um2",
            "stitching.kde.ceiling",
        ),
        detector_names=DETECTOR_NAMES,
    script:
        "../../scripts/fuse_maps.py"
