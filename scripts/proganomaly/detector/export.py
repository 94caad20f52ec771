"""The detector as one self-contained TF SavedModel: the scorer, its fitted Gaussian and τ in one serving function.

Signature `serving_default`: input `patches` uint8 (N, S, S, 3); outputs (by name)
  reconstruction   uint8 (N, S, S, 3)   the model's x̂ (the inpainting scorers: the composite inpainting), mapped
                                        back to [0, 255] and rounded
  anomaly_map      float32 (N, S, S, C) the scorer's per-pixel features (what the Gaussian was fitted to; for
                                        rgb_error e = |x − x̂| per pixel and channel, x in [-1, 1])
  mahalanobis_d2   float32 (N, S, S)    yᵀ Σ⁻¹ y, y = e − μ clipped per channel to its anomalous side when the
                                        Gaussian has one-sided "directions" (tf_stats.tf_mahalanobis_d2); squared
                                        (not square-rooted), globally calibrated
  flags            uint8 (N, S, S)      1 where d² > τ, else 0
  flagged_count    int32 (N,)           number of flagged pixels
  flagged_fraction float32 (N,)         flagged_count / S² (a fraction in [0, 1])
  + the architecture's extra outputs    e.g. Berg's latent_norm float32 (N,) = ‖E(x)‖₂
μ, Σ⁻¹, the directions, τ and the scorer's state are baked in as constants; the generator's weights are saved with it. Nothing
per-image min–max normalised or double-sigmoided is exported (pcead-spec §7.3 items 7, 9, 10).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from proganomaly.calibration import stats
from proganomaly.common.io import atomic_path, write_json
from proganomaly.common.pixels import to_uint8
from proganomaly.detector.load import METADATA_FILE, OUTPUTS, DetectorError


def detector_outputs(scorer, patches, mean, precision, tau: float, directions=None) -> dict:
    """All served outputs for a uint8 batch (traced inside the serving function)."""
    import tensorflow as tf

    from proganomaly.calibration import tf_stats

    views = scorer.views(patches)
    features = scorer.features(views)
    d2 = tf_stats.tf_mahalanobis_d2(features, mean, precision, directions)
    flagged = d2 > tf.constant(np.float32(tau))
    count = tf.reduce_sum(tf.cast(flagged, tf.int32), axis=(1, 2))
    pixels = tf.cast(tf.shape(d2)[1] * tf.shape(d2)[2], tf.float32)
    return {
        "reconstruction": to_uint8(scorer.reconstruction(views)),
        "anomaly_map": features,
        "mahalanobis_d2": d2,
        "flags": tf.cast(flagged, tf.uint8),
        "flagged_count": count,
        "flagged_fraction": tf.cast(count, tf.float32) / pixels,
        **scorer.trained.served_extras(views.x),
    }


def gaussian_directions(gaussian: dict, scorer) -> list[int]:
    """The per-channel directions d² clips with (error_distribution.json's "directions"; absent: two-sided)."""
    d = stats.check_directions(gaussian.get("directions"), len(scorer.channels))
    return [0] * len(scorer.channels) if d is None else d.tolist()


def build_module(scorer, gaussian: dict, tau: float, *, jit_compile: bool = False):
    """A tf.Module whose `serve` is the serving function (fixed S, any N; XLA-compiled when jit_compile)."""
    import tensorflow as tf

    s = int(scorer.trained.patch_size_px)
    mean = np.asarray(gaussian["mean"], np.float64)
    precision = np.asarray(gaussian["precision"], np.float64)
    directions = gaussian_directions(gaussian, scorer)
    if not np.isfinite(tau):
        raise DetectorError(f"threshold τ = {tau} is not finite; refit the threshold")

    module = tf.Module()

    @tf.function(jit_compile=jit_compile)
    def core(patches):
        return detector_outputs(scorer, patches, mean, precision, tau, directions)

    # A loaded signature does not check static shapes by itself; ensure_shape makes the served graph refuse another
    # patch size at run time, before the (optionally XLA-compiled) core runs.
    @tf.function(input_signature=[tf.TensorSpec((None, s, s, 3), tf.uint8, name="patches")])
    def serve(patches):
        return core(tf.ensure_shape(patches, (None, s, s, 3)))

    # Track exactly the variables the traced function reads, whatever object structure the model uses.
    module.model_variables = list(serve.get_concrete_function().variables)
    if not module.model_variables:
        raise DetectorError(f"{type(scorer.trained).__name__} reads no TensorFlow variables: nothing to export")
    module.serve = serve
    return module


def save_detector(scorer, gaussian: dict, tau: float, path: str | Path, *, jit_compile: bool = False) -> dict:
    """Write the SavedModel (into a sibling temp dir, then renamed) and return its metadata."""
    import tensorflow as tf

    trained, s = scorer.trained, int(scorer.trained.patch_size_px)
    module = build_module(scorer, gaussian, tau, jit_compile=jit_compile)
    meta = {
        "architecture": trained.architecture,
        "scorer": scorer.name,
        "patch_size_px": s,
        "input": {"name": "patches", "dtype": "uint8", "shape": [None, s, s, 3]},
        "outputs": [*OUTPUTS, *trained.extra_outputs],
        "anomaly_map_channels": list(scorer.channels),
        "tau": float(np.float32(tau)),
        "mean": np.asarray(gaussian["mean"], np.float64).tolist(),
        "precision": np.asarray(gaussian["precision"], np.float64).tolist(),
        "directions": gaussian_directions(gaussian, scorer),
        "one_sided": any(gaussian_directions(gaussian, scorer)),
        "jit_compile": bool(jit_compile),
        "value_range": "x = patches / 127.5 - 1; reconstruction = round(clip((x_hat + 1) * 127.5, 0, 255))",
    }
    with atomic_path(path) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        write_json(tmp / METADATA_FILE, meta)
    return meta
