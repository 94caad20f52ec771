"""proganomaly: progressive context-encoder GAN anomaly detection on whole-slide images.

The package holds all logic; Snakemake rules call the thin scripts beside it.
"""

__version__ = "0.3.0"
