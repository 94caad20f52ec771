"""Run test code in a fresh Python process that sees only the library (no test modules, no warm TensorFlow state)."""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_fresh_python(code: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run dedented `code` with only scripts/ on the path; fails the test with the child's stderr if it fails."""
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(SCRIPTS), "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res
