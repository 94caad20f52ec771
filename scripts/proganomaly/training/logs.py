"""Numeric CSV logs written row by row and flushed, so a crash loses nothing; on resume, rows newer than the
restored checkpoint are dropped so that the log matches the run that continues.

Live logs and samples sit next to the checkpoints (not outputs, so a failed job's cleanup keeps them) and are
copied to the output directory when training ends.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

from proganomaly.common.io import atomic_path

META_FIELDS = ["global_step", "phase_index", "phase", "resolution", "alpha", "images_seen", "images_per_s"]


class CsvLog:
    def __init__(self, path: str | Path, fields: list[str]):
        self.path, self.fields = Path(path), list(fields)
        self._fh = None

    def open(self, keep_until_step: int | None) -> None:
        """Start a new log (keep_until_step None) or keep the existing rows with global_step ≤ keep_until_step."""
        rows = []
        if keep_until_step is not None and self.path.exists():
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames == self.fields:
                    rows = [r for r in reader if int(float(r["global_step"])) <= keep_until_step]
        with atomic_path(self.path, ".tmp") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self.fields)
            writer.writeheader()
            writer.writerows(rows)
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._fh, self.fields, restval="")

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _fmt(row.get(k, "")) for k in self.fields})
        self._fh.flush()

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None


class TrainingLogs:
    """The loss log and the held-out error log of one run, opened, cut back and closed together."""

    def __init__(self, state_dir: Path, loss_fields: list[str], heldout_fields: list[str]):
        self.state_dir = Path(state_dir)
        self.loss = CsvLog(self.state_dir / "logs" / "loss_log.csv", META_FIELDS + loss_fields)
        self.heldout = CsvLog(self.state_dir / "logs" / "heldout_error.csv", heldout_fields)

    def open(self, keep_until_step: int | None) -> None:
        self.loss.open(keep_until_step)
        self.heldout.open(keep_until_step)

    def close(self) -> None:
        self.loss.close()
        self.heldout.close()

    def publish(self, out: Path) -> None:
        """Copy the live logs and sample grids to the output directory."""
        out.mkdir(parents=True, exist_ok=True)
        for log_file in (self.loss.path, self.heldout.path):
            shutil.copyfile(log_file, out / log_file.name)
        samples = self.state_dir / "samples"
        (out / "samples").mkdir(exist_ok=True)
        if samples.exists():
            shutil.copytree(samples, out / "samples", dirs_exist_ok=True)


def read_csv(path) -> list[dict]:
    """Rows of a numeric CSV log as dicts (numbers parsed)."""

    def num(v):
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if f.is_integer() and "." not in v and "e" not in v else f

    with open(path, newline="") as fh:
        return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v
