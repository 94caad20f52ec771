"""What a training run is: its config, seed and patch size, the fingerprint of everything that changes its numbers,
and the determinism switch that makes the same fingerprint give the same weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import tensorflow as tf

from proganomaly.config import ModelConfig, TrainingConfig

# Training settings that change no number of the result (so changing them does not invalidate a checkpoint).
_NOT_MATH = {
    "checkpoint_every_images", "checkpoint_every_minutes", "keep_checkpoints", "log_every_steps", "max_nan_rollbacks",
    "heldout_examples", "heldout_batch_size", "sample_images", "save_phase_weights",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunSpec:
    model: ModelConfig
    training: TrainingConfig
    seed: int
    patch_size_px: int
    replicas: int = 1  # devices of the MirroredStrategy: each draws its own masks and noise


def enable_determinism(seed: int) -> None:
    """Same seed → same weights on CPU (op determinism also makes tf.data's parallel map keep its order)."""
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fingerprint(spec: RunSpec, data: str = "") -> str:
    """Hash of everything that changes the numbers: model and training config (minus bookkeeping), seed, data."""
    training = {k: v for k, v in dataclasses.asdict(spec.training).items() if k not in _NOT_MATH}
    blob = json.dumps(
        {"model": dataclasses.asdict(spec.model), "training": training, "seed": spec.seed,
         "patch_size_px": spec.patch_size_px, "data": data, **({"replicas": spec.replicas} if spec.replicas > 1 else {})},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def phase_seed(seed: int, phase_index: int, rollbacks: int = 0) -> int:
    """The data-order seed of one phase; each NaN rollback gives the replay a new order."""
    return (int(seed) * 1009 + phase_index * 7919 + rollbacks * 104729 + 17) % (2**31 - 1)


def step_seed(seed: int, rollbacks: int = 0) -> int:
    """The seed of the steps' masks, noise and penalty mixes; each NaN rollback moves to fresh numbers, so that a NaN
    from the training dynamics is not replayed exactly until the rollback budget is spent."""
    return int(seed) if not rollbacks else (int(seed) + 7368787 * int(rollbacks)) % (2**31 - 1)
