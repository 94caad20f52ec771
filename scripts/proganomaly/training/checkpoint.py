"""Resume state on disk: tf.train.Checkpoint files plus an atomically replaced ``latest.json`` that names the last
complete one. A job killed while writing leaves files that nothing points to; the previous checkpoint stays valid."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import tensorflow as tf

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
        tmp = self.dir / (LATEST + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(info, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.dir / LATEST)
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
