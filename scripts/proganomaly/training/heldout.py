"""The held-out reconstruction error after every phase, at the phase's resolution and upsampled to full size.

Streamed: held-out patches come as a dataset, are reconstructed in compiled chunks of `batch_size`, and only six
per-example sums per chunk come back to the host, so memory does not grow with the held-out count or the patch size
(the earlier version kept five float32 copies of every held-out patch: about 16 GB at 1024 px).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from proganomaly.training.steps import to_float

log = logging.getLogger("proganomaly.training")

HELDOUT_FIELDS = [
    "global_step", "phase_index", "phase", "resolution", "images_seen", "examples",
    "l1", "l2", "l1_full", "l2_full", "l1_full_floor", "l2_full_floor",
]  # fmt: skip
_SUMS = HELDOUT_FIELDS[6:]

# resolution → dataset of uint8 (r, r, 3) held-out patches, the same patches in the same order at every resolution;
# or None when there are none.
HeldoutFn = Callable[[int], "tf.data.Dataset | None"]


def reconstruct(nets, x: np.ndarray, block: int, chunk: int = 32) -> np.ndarray:
    """float32 reconstructions of (a few) uint8 patches at the stable phase of `block`, for the sample grids."""
    outs = []
    for i in range(0, len(x), chunk):
        xb = to_float(tf.constant(x[i : i + chunk]))
        outs.append(tf.cast(nets.reconstruct(xb, block), tf.float32).numpy())
    return np.concatenate(outs)


def _upsample(x, factor: int):
    return x if factor == 1 else tf.repeat(tf.repeat(x, factor, axis=1), factor, axis=2)


def error_sums(nets, block: int, resolution: int, patch_size_px: int):
    """A compiled ``(x, full) → float64 (6,)``: per-example mean L1/L2 at the phase's resolution, after nearest
    upsampling to full size, and of upsampling x itself (the floor), summed over the chunk."""
    f = patch_size_px // resolution

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, resolution, resolution, 3), tf.uint8),
            tf.TensorSpec((None, patch_size_px, patch_size_px, 3), tf.uint8),
        ],
        reduce_retracing=True,
    )
    def sums(x, full):
        xf, ff = to_float(x), to_float(full)
        rec = tf.cast(nets.reconstruct(xf, block), tf.float32)
        up, floor = _upsample(rec, f), _upsample(xf, f)
        pairs = [(rec, xf), (up, ff), (floor, ff)]
        means = []
        for a, b in pairs:
            d = a - b
            means += [tf.reduce_mean(tf.abs(d), axis=[1, 2, 3]), tf.reduce_mean(tf.square(d), axis=[1, 2, 3])]
        return tf.stack([tf.reduce_sum(tf.cast(m, tf.float64)) for m in means])

    return sums


class HeldoutEvaluator:
    """The held-out error of the model at each phase end, and its log row."""

    def __init__(self, nets, heldout_fn: HeldoutFn | None, patch_size_px: int, log_file, *, batch_size: int = 32,
                 keep: int = 8):  # fmt: skip
        self.nets, self.heldout_fn, self.patch_size_px, self.log_file = nets, heldout_fn, patch_size_px, log_file
        self.batch_size, self.keep = int(batch_size), int(keep)

    def evaluate(self, block: int, phase_name: str, phase_index: int, state: dict) -> np.ndarray | None:
        """Log the error of the model at `block`; return the first `keep` held-out patches (None when there are none)."""
        res = 4 * 2**block
        x_ds = self.heldout_fn(res) if self.heldout_fn else None
        full_ds = self.heldout_fn(self.patch_size_px) if x_ds is not None else None
        if x_ds is None or full_ds is None:
            return None
        sums = error_sums(self.nets, block, res, self.patch_size_px)
        total, n, first = np.zeros(len(_SUMS)), 0, []
        for xb, fb in tf.data.Dataset.zip((x_ds, full_ds)).batch(self.batch_size).prefetch(1):
            total += sums(xb, fb).numpy()
            n += int(xb.shape[0])
            if sum(map(len, first)) < self.keep:
                first.append(xb.numpy()[: self.keep])
        if not n:
            return None
        row = {
            "global_step": state["global_step"], "phase_index": phase_index, "phase": phase_name, "resolution": res,
            "images_seen": state["images_seen"], "examples": n, **dict(zip(_SUMS, (total / n).tolist(), strict=True)),
        }  # fmt: skip
        self.log_file.write(row)
        log.info("held-out error after %s: L1 %.4f, L2 %.4f (at %d px: L1 %.4f)", phase_name, row["l1_full"],
                 row["l2_full"], res, row["l1"])  # fmt: skip
        return np.concatenate(first)[: self.keep]
