"""The context detector (issue 19): each location scored by the texture of its neighbourhood, not just its patch.

Same-stain anomalies (pieces of a slide's own epidermis set into dermis, normal tissue pasted at the wrong scale) are
normal at the patch detector's 32 µm window; only their surroundings make them anomalous. The detector runs after
tiling, on the slide's patch table, in four steps, each a small module with arrays in and arrays out:

1. `features`: 20 colour and texture statistics of every stain-normalised patch (the texture_baseline scorer's).
2. `neighbourhood`: coverage-normalised means (and optionally standard deviations) of those statistics over the
   patches whose centres lie within discs or rings of given radii in µm; `vectors` joins them, with or without the
   patch's own statistics, into one context vector per patch.
3. `reference`: each column standardised with the statistics of the normal reference patches (train and calibrate
   slides), a seeded subsample of their vectors kept, and every patch scored by its mean Euclidean distance to its
   k nearest reference vectors; fitted once, saved (npz + JSON) and loaded for every slide.
4. `paint`: the per-patch score painted onto the slide's shared map grid (each patch's stride cell), NaN where no
   patch, so that the fusion (proganomaly.maps.fusion) combines it with the other detectors' maps.

tests/benchmarks/bench_context.py measures it on the demo benchmark; tests/test_context.py tests it.
"""
