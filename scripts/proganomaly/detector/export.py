"""The detector as one self-contained TF SavedModel, a checked loader for it, and its model card.

Signature `serving_default`: input `patches` uint8 (N, S, S, 3); outputs (by name)
  reconstruction   uint8 (N, S, S, 3)   G(x) (GANomaly) or G(E(x)) (Berg), mapped back to [0, 255] and rounded
  anomaly_map      float32 (N, S, S, 3) e = |x − x̂| per pixel and channel, x in [-1, 1] (what the Gaussian was fit to)
  mahalanobis_d2   float32 (N, S, S)    (e − μ)ᵀ Σ⁻¹ (e − μ), squared (not square-rooted), globally calibrated
  flags            uint8 (N, S, S)      1 where d² > τ, else 0
  flagged_count    int32 (N,)           number of flagged pixels
  flagged_fraction float32 (N,)         flagged_count / S² (a fraction in [0, 1])
  latent_norm      float32 (N,)         Berg only: ‖E(x)‖₂
μ, Σ⁻¹ and τ are baked in as constants; the generator's weights are saved with it. Nothing per-image min–max
normalised or double-sigmoided is exported (pcead-spec §7.3 items 7, 9, 10).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from proganomaly.calibration import stats
from proganomaly.calibration.errors import reconstruction_error

OUTPUTS = ("reconstruction", "anomaly_map", "mahalanobis_d2", "flags", "flagged_count", "flagged_fraction")
BERG_OUTPUTS = ("latent_norm",)
METADATA_FILE = "assets.extra/proganomaly.json"


class DetectorError(ValueError):
    """A SavedModel cannot be loaded or was given patches it cannot take; the message says what to change."""


def detector_outputs(trained, patches, mean, precision, tau: float) -> dict:
    """All served outputs for a uint8 batch (traced inside the serving function)."""
    import tensorflow as tf

    x, xhat, e = reconstruction_error(trained.reconstruct, patches)
    d2 = stats.tf_mahalanobis_d2(e, mean, precision)
    flagged = d2 > tf.constant(np.float32(tau))
    count = tf.reduce_sum(tf.cast(flagged, tf.int32), axis=(1, 2))
    pixels = tf.cast(tf.shape(d2)[1] * tf.shape(d2)[2], tf.float32)
    out = {
        "reconstruction": tf.cast(tf.round(tf.clip_by_value((xhat + 1.0) * 127.5, 0.0, 255.0)), tf.uint8),
        "anomaly_map": e,
        "mahalanobis_d2": d2,
        "flags": tf.cast(flagged, tf.uint8),
        "flagged_count": count,
        "flagged_fraction": tf.cast(count, tf.float32) / pixels,
    }
    if trained.architecture == "berg":
        z = tf.cast(trained.encode(x), tf.float32)
        out["latent_norm"] = tf.norm(tf.reshape(z, (tf.shape(z)[0], -1)), axis=-1)
    return out


def build_module(trained, gaussian: dict, tau: float, *, jit_compile: bool = False):
    """A tf.Module whose `serve` is the serving function (fixed S, any N; XLA-compiled when jit_compile)."""
    import tensorflow as tf

    s = int(trained.patch_size)
    mean = np.asarray(gaussian["mean"], np.float64)
    precision = np.asarray(gaussian["precision"], np.float64)
    if not np.isfinite(tau):
        raise DetectorError(f"threshold τ = {tau} is not finite; refit the threshold")

    module = tf.Module()

    @tf.function(jit_compile=jit_compile)
    def core(patches):
        return detector_outputs(trained, patches, mean, precision, tau)

    # A loaded signature does not check static shapes by itself; ensure_shape makes the served graph refuse another
    # patch size at run time, before the (optionally XLA-compiled) core runs.
    @tf.function(input_signature=[tf.TensorSpec((None, s, s, 3), tf.uint8, name="patches")])
    def serve(patches):
        return core(tf.ensure_shape(patches, (None, s, s, 3)))

    # Track exactly the variables the traced function reads, whatever object structure the model uses.
    module.model_variables = list(serve.get_concrete_function().variables)
    if not module.model_variables:
        raise DetectorError(f"{type(trained).__name__}.reconstruct reads no TensorFlow variables: nothing to export")
    module.serve = serve
    return module


def save_detector(trained, gaussian: dict, tau: float, path: str | Path, *, jit_compile: bool = False) -> dict:
    """Write the SavedModel (into a sibling temp dir, then renamed) and return its metadata."""
    import shutil

    import tensorflow as tf

    path = Path(path)
    module = build_module(trained, gaussian, tau, jit_compile=jit_compile)
    names = OUTPUTS + (BERG_OUTPUTS if trained.architecture == "berg" else ())
    meta = {
        "architecture": trained.architecture,
        "patch_size": int(trained.patch_size),
        "input": {
            "name": "patches",
            "dtype": "uint8",
            "shape": [None, int(trained.patch_size), int(trained.patch_size), 3],
        },
        "outputs": list(names),
        "tau": float(np.float32(tau)),
        "mean": np.asarray(gaussian["mean"], np.float64).tolist(),
        "precision": np.asarray(gaussian["precision"], np.float64).tolist(),
        "jit_compile": bool(jit_compile),
        "value_range": "x = patches / 127.5 - 1; reconstruction = round(clip((x_hat + 1) * 127.5, 0, 255))",
    }
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    (tmp / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return meta


@dataclasses.dataclass(frozen=True)
class Detector:
    """A loaded SavedModel that checks its input before running it; call with a uint8 (N, S, S, 3) array."""

    path: str
    patch_size: int
    outputs: tuple[str, ...]
    function: object
    metadata: dict

    def check(self, patches) -> np.ndarray:
        arr = np.asarray(patches)
        s = self.patch_size
        if arr.dtype != np.uint8:
            raise DetectorError(
                f"{self.path}: patches must be uint8 RGB in [0, 255], got dtype {arr.dtype}; pass the decoded image "
                "bytes unchanged (do not scale to [-1, 1] or [0, 1]: the model does that)"
            )
        if arr.ndim != 4 or arr.shape[1:] != (s, s, 3):
            raise DetectorError(
                f"{self.path}: patches must have shape (N, {s}, {s}, 3), got {arr.shape}; this model was trained on "
                f"{s}×{s} px patches: resample (area) to {s} px or use the records of that resolution"
            )
        return arr

    def __call__(self, patches, batch_size: int | None = None) -> dict[str, np.ndarray]:
        import tensorflow as tf

        arr = self.check(patches)
        step = batch_size or max(len(arr), 1)
        chunks = [self.function(patches=tf.constant(arr[i : i + step])) for i in range(0, max(len(arr), 1), step)]
        return {k: np.concatenate([c[k].numpy() for c in chunks]) for k in self.outputs}


def load_detector(path: str | Path) -> Detector:
    """Load the SavedModel from disk (any process); the patch size comes from the signature itself."""
    import tensorflow as tf

    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise DetectorError(f"{path}: not a SavedModel directory (no saved_model.pb); run the export_model rule")
    loaded = tf.saved_model.load(str(path))
    try:
        fn = loaded.signatures["serving_default"]
    except KeyError:
        raise DetectorError(f"{path}: SavedModel has no 'serving_default' signature") from None
    spec = fn.structured_input_signature[1].get("patches")
    if spec is None:
        raise DetectorError(f"{path}: serving_default takes no 'patches' input; not a proganomaly detector")
    meta_file = path / METADATA_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    outputs = tuple(sorted(fn.structured_outputs, key=lambda k: (OUTPUTS + BERG_OUTPUTS).index(k)))
    # keep the loaded object alive with the function: the signature holds only weak references to its variables
    function = _bound(fn, loaded)
    return Detector(str(path), int(spec.shape[1]), outputs, function, meta)


def _bound(fn, owner):
    def call(**kwargs):
        return fn(**kwargs)

    call.owner = owner
    return call


def model_card(
    *, config: dict, metadata: dict, model_files: dict, manifests: dict, error_distribution: dict, threshold: dict
) -> dict:
    """What the export is and was made from: files with sha256, statistics, τ and the serving interface."""
    from proganomaly.data.records import sha256_file

    def files(paths):
        return [{"path": str(p), "sha256": sha256_file(p)} for p in paths]

    return {
        "name": "proganomaly detector",
        "architecture": metadata["architecture"],
        "patch_size_px": metadata["patch_size"],
        "serving": {
            "signature": "serving_default",
            "input": metadata["input"],
            "outputs": metadata["outputs"],
            "value_range": metadata["value_range"],
            "jit_compile": metadata["jit_compile"],
            "loader": "proganomaly.detector.export.load_detector(path) checks shape and dtype",
        },
        "model_files": {name: files([p])[0] for name, p in model_files.items()},
        "data_manifests": {split: files(paths) for split, paths in manifests.items()},
        "error_distribution": {
            k: error_distribution.get(k)
            for k in ("n_pixels", "n_patches", "mean", "covariance", "precision", "precision_cholesky")
        },
        "threshold": {
            "tau": metadata["tau"],
            "method": threshold.get("method"),
            "unsupervised": threshold.get("unsupervised"),
            "supervised": threshold.get("supervised"),
        },
        "config": config,
    }
