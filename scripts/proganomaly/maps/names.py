"""Names of a slide's maps: what stitch_maps writes, as plain constants.

Kept apart from proganomaly.maps.slidemaps (which imports SciPy through the KDE) so that the workflow can name the
rule outputs at parse time without that import (~1 s of every `snakemake` call).
"""

RGB_MAPS = ("thumbnail", "reconstruction", "kde_color")
MASK_MAPS = ("tissue", "coverage")
FLOAT_MAPS = ("anomaly_map", "mahalanobis_d2", "flags", "kde")
MAP_NAMES = (
    "thumbnail",
    "reconstruction",
    "anomaly_map",
    "mahalanobis_d2",
    "flags",
    "tissue",
    "coverage",
    "kde",
    "kde_color",
)
# Float maps whose values are fractions in [0, 1]; their uint16 renditions share one fixed scale.
FRACTION_MAPS = ("flags", "kde")
RENDITION_SUFFIX = ".u16.tif"
