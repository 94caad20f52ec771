"""Debian packages some tests need: apt-installed when missing and running as root, else the test is skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

import pytest


def ensure_apt(package: str, present: Callable[[], object]):
    """`present()` (a path, or truthy) once `package` is installed; installs it with apt-get when possible."""
    found = present()
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], env=env, check=False, timeout=900
        )
        found = present()
        if found:
            return found
    pytest.skip(f"Debian package {package} is not installed and cannot be installed here (not root or no apt-get)")
