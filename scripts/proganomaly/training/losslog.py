"""Numeric CSV logs written row by row and flushed, so a crash loses nothing; on resume, rows newer than the
restored checkpoint are dropped so that the log matches the run that continues."""

from __future__ import annotations

import csv
import math
from pathlib import Path


class CsvLog:
    def __init__(self, path: str | Path, fields: list[str]):
        self.path, self.fields = Path(path), list(fields)
        self._fh = None

    def open(self, keep_until_step: int | None) -> None:
        """Start a new log (keep_until_step None) or keep the existing rows with global_step ≤ keep_until_step."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if keep_until_step is not None and self.path.exists():
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames == self.fields:
                    rows = [r for r in reader if int(float(r["global_step"])) <= keep_until_step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self.fields)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._fh, self.fields, restval="")

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _fmt(row.get(k, "")) for k in self.fields})
        self._fh.flush()

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v
