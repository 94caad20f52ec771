"""The one loader of an exported detector: checks the SavedModel and wraps its signature as a numpy callable that
refuses patches of the wrong size or dtype."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

OUTPUTS = ("reconstruction", "anomaly_map", "mahalanobis_d2", "flags", "flagged_count", "flagged_fraction")
# What the maps stage reads; the original's SavedModels also have these (its flags are ±1: "flagged" is > 0).
REQUIRED_OUTPUTS = ("reconstruction", "anomaly_map", "mahalanobis_d2", "flags")
METADATA_FILE = "assets.extra/proganomaly.json"


@dataclasses.dataclass(frozen=True)
class Detector:
    """A loaded SavedModel that checks its input before running it; call with a uint8 (N, S, S, 3) array."""

    path: str
    patch_size_px: int
    outputs: tuple[str, ...]
    function: object
    metadata: dict

    @property
    def directions(self) -> tuple[int, ...] | None:
        """Per anomaly_map channel, the side its d² counts (+1 larger, −1 smaller, 0 both), as exported; None for a
        SavedModel exported before d² could be one-sided (two-sided everywhere)."""
        d = self.metadata.get("directions")
        return None if d is None else tuple(int(v) for v in d)

    def check(self, patches) -> np.ndarray:
        arr = np.asarray(patches)
        s = self.patch_size_px
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


class DetectorError(ValueError):
    """A SavedModel cannot be loaded or was given patches it cannot take; the message says what to change."""


def load_detector(path: str | Path, required: tuple[str, ...] = REQUIRED_OUTPUTS, strategy=None) -> Detector:
    """Load the SavedModel from disk (any process); the patch size comes from the signature itself.

    `required`: the outputs the caller reads; a detector lacking one is refused here, not mid-slide.
    `strategy`: a tf.distribute.MirroredStrategy (proganomaly.common.devices.replica_strategy) to split every call's
    patches over its devices: the SavedModel is loaded once under its scope (weights mirrored on each device) and each
    call runs the serving function on contiguous, equal shares of the patches, one per device, and concatenates the
    outputs in patch order. Every output is per patch, so the result equals one device's.
    """
    import tensorflow as tf

    from proganomaly.common.devices import scope

    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise DetectorError(f"{path}: not a SavedModel directory (no saved_model.pb); run the export_model rule")
    if strategy is not None and strategy.num_replicas_in_sync < 2:
        strategy = None
    with scope(strategy):
        loaded = tf.saved_model.load(str(path))
    try:
        fn = loaded.signatures["serving_default"]
    except KeyError:
        raise DetectorError(f"{path}: SavedModel has no 'serving_default' signature") from None
    spec = fn.structured_input_signature[1].get("patches")
    if spec is None:
        raise DetectorError(f"{path}: serving_default takes no 'patches' input; not a proganomaly detector")
    missing = [name for name in required if name not in fn.structured_outputs]
    if missing:
        raise DetectorError(
            f"{path}: serving_default lacks output(s) {missing}; it has {sorted(fn.structured_outputs)}"
        )
    meta_file = path / METADATA_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta.get("directions") is not None and len(meta["directions"]) != len(meta.get("anomaly_map_channels", [])):
        raise DetectorError(
            f"{meta_file}: {len(meta['directions'])} directions for channels {meta.get('anomaly_map_channels')}; "
            "the export is inconsistent: rerun export_model"
        )
    # the contract's outputs first, in their order, then the architecture's extras by name
    outputs = tuple(
        sorted(fn.structured_outputs, key=lambda k: (OUTPUTS.index(k) if k in OUTPUTS else len(OUTPUTS), k))
    )
    # keep the loaded object alive with the function: the signature holds only weak references to its variables
    call = _bound(fn, loaded) if strategy is None else _split(fn, loaded, strategy)
    if meta.get("jit_compile"):
        call = _padded(call)
    return Detector(str(path), int(spec.shape[1]), outputs, call, meta)


def _padded(call):
    """An XLA-compiled serving function compiles once per batch size (seconds on a CPU): each slide's last, shorter
    batch would cost a compile of its own. Shorter batches are padded (repeating their last patch) to the largest size
    served so far and the padding dropped; every output is per patch, so the result is unchanged."""
    import tensorflow as tf

    largest = [0]

    def padded(patches):
        arr = np.asarray(patches)
        n = len(arr)
        largest[0] = max(largest[0], n)
        if 0 < n < largest[0]:
            return {k: v[:n] for k, v in call(patches=tf.constant(_pad_to(arr, largest[0]))).items()}
        return call(patches=patches)

    padded.owner = call  # the wrapped call keeps the loaded SavedModel alive
    return padded


def _pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    """The batch grown to `size` patches by repeating its last one (zeros for an empty batch); outputs of the padding
    are dropped by the callers, since every output is per patch."""
    if len(arr) >= size:
        return arr
    fill = arr[-1:] if len(arr) else np.zeros((1, *arr.shape[1:]), arr.dtype)
    return np.concatenate([arr, np.repeat(fill, size - len(arr), axis=0)])


def _bound(fn, owner):
    def call(**kwargs):
        return fn(**kwargs)

    call.owner = owner
    return call


def _split(fn, owner, strategy):
    """fn(patches=...) with the patches split over the strategy's replicas: the batch is padded (repeating its last
    patch) to a multiple of the replica count, each replica serves one contiguous share, the padding is dropped."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync

    @tf.function
    def run(shares):
        return strategy.run(lambda p: fn(patches=p), args=(shares,))

    def call(patches):
        arr = np.asarray(patches)
        n = len(arr)
        per = -(-max(n, 1) // replicas)
        arr = _pad_to(arr, per * replicas)
        parts = [arr[r * per : (r + 1) * per] for r in range(replicas)]
        shares = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group])
        )
        out = run(shares)
        return {k: tf.concat(strategy.experimental_local_results(v), 0)[:n] for k, v in out.items()}

    call.owner = owner
    return call
