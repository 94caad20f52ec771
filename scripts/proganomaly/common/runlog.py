"""Logging, progress lines and provenance shared by every rule script."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from proganomaly.common.io import write_json  # noqa: F401  (the rule scripts import it from here)

log = logging.getLogger("proganomaly")

_PACKAGES = (
    "proganomaly numpy pandas pillow tifffile imagecodecs shapely scikit-learn scikit-image scipy "
    "tensorflow keras pyarrow seaborn matplotlib snakemake"
).split()


def setup_logging(log_path: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the package's log (and uncaught tracebacks) to the rule's log file, or stderr when run by hand."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers = [logging.FileHandler(log_path, mode="w")]
        # Tracebacks of a crashing script must land in the log that Snakemake shows, not in a vanished stderr.
        sys.stderr = open(log_path, "a", buffering=1)
    logging.basicConfig(
        level=level, handlers=handlers, force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return log


class Progress:
    """Logs `done/total`, rate and ETA at most every `every_s` seconds (and at the end)."""

    def __init__(self, total: int, what: str, unit: str = "items", every_s: float = 10.0, logger=None):
        self.total, self.what, self.unit, self.every_s = max(int(total), 0), what, unit, every_s
        self.done = 0
        self.start = self._last = time.perf_counter()
        self.log = logger or log

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        left = (self.total - self.done) / rate if rate and rate == rate and rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.1f}%), {rate:.2f} {self.unit}/s, "
            f"elapsed {elapsed:.1f} s, ETA {left:.1f} s"
        )


def versions(packages=_PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit(repo: str | Path | None = None) -> str | None:
    repo = Path(repo or Path(__file__).resolve().parents[3])
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(config: dict | None = None, **extra) -> dict:
    """What every output records about how it was made: config, versions, commit, time."""
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "git_commit": git_commit(),
    }
    if config is not None:
        record["config"] = config
    record.update(extra)
    return record
