"""Resume state on disk: tf.train.Checkpoint files plus an atomically replaced ``latest.json`` that names the last
complete one. A job killed while writing leaves files that nothing points to; the previous checkpoint stays valid."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import tensorflow as tf

from proganomaly.common.io import write_text

log = logging.getLogger("proganomaly.training")
LATEST = "latest.json"


class CheckpointStore:
    def __init__(self, directory: str | Path, checkpoint: tf.train.Checkpoint, fingerprint: str, keep: int = 2):
        self.dir = Path(directory)
        self.ckpt, self.fingerprint, self.keep = checkpoint, fingerprint, max(int(keep), 1)

    def latest(self) -> dict | None:
        path = self.dir / LATEST
        if not path.exists():
            return None
        info = json.loads(path.read_text())
        if info.get("fingerprint") != self.fingerprint:
            log.warning(
                "checkpoints in %s were made with another config or input (fingerprint %s, now %s): starting afresh",
                self.dir, info.get("fingerprint"), self.fingerprint,
            )  # fmt: skip
            for stale in (*self.dir.glob("ckpt-*"), path, *self.dir.glob("logs/*"), *self.dir.glob("samples/*")):
                stale.unlink(missing_ok=True)
            return None
        return info

    def save(self, global_step: int, **extra) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        prefix = str(self.dir / f"ckpt-{global_step:09d}")
        path = self.ckpt.write(prefix)
        info = {"fingerprint": self.fingerprint, "path": Path(path).name, "global_step": int(global_step), **extra}
        write_text(self.dir / LATEST, json.dumps(info), fsync=True)
        self._prune()
        return path

    def restore(self) -> dict | None:
        """Load the latest checkpoint into the tracked objects; None when there is none (or it is stale)."""
        info = self.latest()
        if info is None:
            return None
        self.ckpt.read(str(self.dir / info["path"])).assert_existing_objects_matched()
        return info

    def _prune(self) -> None:
        names = sorted({p.name.split(".")[0] for p in self.dir.glob("ckpt-*")})
        for stale in names[: -self.keep]:
            for p in self.dir.glob(stale + ".*"):
                p.unlink(missing_ok=True)


COUNTERS = ("phase_index", "phase_iteration", "global_step", "images_seen", "nan_rollbacks")


class Counters(dict):
    """Where the run stands (plain ints), mirrored into int64 variables that the checkpoint holds."""

    def __init__(self):
        super().__init__(dict.fromkeys(COUNTERS, 0))
        self.variables = {k: tf.Variable(0, dtype=tf.int64, trainable=False, name=k) for k in COUNTERS}

    def to_variables(self) -> None:
        for k, v in self.variables.items():
            v.assign(self[k])

    def from_variables(self) -> None:
        self.update({k: int(v.numpy()) for k, v in self.variables.items()})


class Checkpointer:
    """Saves and restores the networks, optimisers and counters of a run as one checkpoint.

    Saves are due every `every_minutes` of wall clock (and every `every_images` when set): a checkpoint of the paper's
    model is about 1 GB, which at 4–32 px a count of images would ask for every few seconds.
    """

    def __init__(self, directory: str | Path, objects: dict, counters: Counters, fingerprint: str, keep: int,
                 every_minutes: float = 30.0, every_images: int | None = None):  # fmt: skip
        self.counters = counters
        self.store = CheckpointStore(directory, tf.train.Checkpoint(**objects, **counters.variables), fingerprint, keep)
        self.every_s, self.every_images = float(every_minutes) * 60.0, every_images
        self.last_save = time.monotonic()

    def due(self, images_before: int) -> bool:
        """Whether a save is due after a step that took images_seen from `images_before` to its current value."""
        every, now = self.every_images, self.counters["images_seen"]
        if every and now // every > images_before // every:
            return True
        return time.monotonic() - self.last_save >= self.every_s

    def save(self) -> None:
        self.last_save = time.monotonic()
        c = self.counters
        c.to_variables()
        self.store.save(c["global_step"], phase_index=c["phase_index"], phase_iteration=c["phase_iteration"],
                        images_seen=c["images_seen"])  # fmt: skip

    def restore(self) -> bool:
        """Load the last checkpoint into the objects and counters; False when there is none to resume."""
        self.last_save = time.monotonic()
        if self.store.restore() is None:
            return False
        self.counters.from_variables()
        return True
