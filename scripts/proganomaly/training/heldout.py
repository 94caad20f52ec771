"""The held-out reconstruction error after every phase, at the phase's resolution and upsampled to full size."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from proganomaly.common.pixels import to_unit_by_division
from proganomaly.training.steps import to_float

log = logging.getLogger("proganomaly.training")

HELDOUT_FIELDS = [
    "global_step", "phase_index", "phase", "resolution", "images_seen", "examples",
    "l1", "l2", "l1_full", "l2_full", "l1_full_floor", "l2_full_floor",
]  # fmt: skip

HeldoutFn = Callable[[int], np.ndarray | None]  # resolution → uint8 (n, r, r, 3) held-out patches, or None


def reconstruct(nets, x: np.ndarray, block: int, chunk: int = 32) -> np.ndarray:
    """float32 reconstructions of uint8 patches at the stable phase of `block`, in chunks."""
    outs = []
    for i in range(0, len(x), chunk):
        xb = to_float(tf.constant(x[i : i + chunk]))
        outs.append(tf.cast(nets.reconstruct(xb, block), tf.float32).numpy())
    return np.concatenate(outs)


def errors(x: np.ndarray, full: np.ndarray, rec: np.ndarray, patch_size_px: int) -> dict:
    """L1/L2 at the phase's resolution, after nearest upsampling to full size, and the floor of upsampling x itself."""
    xf, ff = to_unit_by_division(x), to_unit_by_division(full)
    f = patch_size_px // x.shape[1]
    up = np.repeat(np.repeat(rec, f, axis=1), f, axis=2)
    floor = np.repeat(np.repeat(xf, f, axis=1), f, axis=2)
    return {
        "l1": float(np.abs(rec - xf).mean()), "l2": float(np.square(rec - xf).mean()),
        "l1_full": float(np.abs(up - ff).mean()), "l2_full": float(np.square(up - ff).mean()),
        "l1_full_floor": float(np.abs(floor - ff).mean()), "l2_full_floor": float(np.square(floor - ff).mean()),
    }  # fmt: skip


class HeldoutEvaluator:
    """Held-out patches per resolution (read once), their reconstruction error, and its log row."""

    def __init__(self, nets, heldout_fn: HeldoutFn | None, patch_size_px: int, log_file):
        self.nets, self.heldout_fn, self.patch_size_px, self.log_file = nets, heldout_fn, patch_size_px, log_file
        self._cache: dict[int, np.ndarray | None] = {}

    def patches(self, resolution: int) -> np.ndarray | None:
        if resolution not in self._cache:
            self._cache[resolution] = self.heldout_fn(resolution) if self.heldout_fn else None
        return self._cache[resolution]

    def evaluate(self, block: int, phase_name: str, phase_index: int, state: dict) -> np.ndarray | None:
        """Log the error of the model at `block`; return the held-out patches used (None when there are none)."""
        res = 4 * 2**block
        x, full = self.patches(res), self.patches(self.patch_size_px)
        if x is None or full is None or not len(x):
            return None
        row = {
            "global_step": state["global_step"], "phase_index": phase_index, "phase": phase_name, "resolution": res,
            "images_seen": state["images_seen"], "examples": len(x),
            **errors(x, full, reconstruct(self.nets, x, block), self.patch_size_px),
        }  # fmt: skip
        self.log_file.write(row)
        log.info("held-out error after %s: L1 %.4f, L2 %.4f (at %d px: L1 %.4f)", phase_name, row["l1_full"],
                 row["l2_full"], res, row["l1"])  # fmt: skip
        return x
