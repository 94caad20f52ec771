"""Bad input fails early with a message that names the slide (id or file) and the fix."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from proganomaly.data import slide as slide_module
from proganomaly.data.sheet import SheetError, read_slide_sheet
from proganomaly.data.slide import SlideError, open_slide

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def write_slide(path: Path, mpp: float | None = 0.5, size=(384, 512)) -> Path:
    """A small tiled RGB pyramid with a pink tissue block in the middle."""
    h, w = size
    img = np.full((h, w, 3), 244, np.uint8)
    img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (185, 105, 160)
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(64, 64), compression="jpeg", subifds=1, photometric="rgb", **res)
        tw.write(img[::4, ::4], tile=(64, 64), compression="jpeg", subfiletype=1, photometric="rgb")
    return path


def write_sheet(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["slide_id\tpath\tmpp\tsplit\tannotations"] + [f"{sid}\t{p}\t{mpp}\ttrain\t" for sid, p, mpp in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if anything decodes pixels: file problems must be found from headers alone."""

    def forbidden(*args, **kwargs):
        raise AssertionError("pixels were decoded before the file was checked")

    monkeypatch.setattr(slide_module.Slide, "_segment", forbidden)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", forbidden)


# --- caught when the sheet is parsed (proganomaly.data.sheet, called from common.smk) ---


def test_missing_file_is_caught_at_parse_time(tmp_path):
    sheet = write_sheet(tmp_path / "s.tsv", [("lost_slide", str(tmp_path / "nowhere.svs"), "")])
    with pytest.raises(SheetError, match=r"lost_slide.*nowhere\.svs does not exist"):
        read_slide_sheet(sheet)


def test_duplicate_ids_are_caught_at_parse_time(tmp_path):
    good = write_slide(tmp_path / "a.tif")
    sheet = write_sheet(tmp_path / "s.tsv", [("twin", str(good), ""), ("twin", str(good), "")])
    with pytest.raises(SheetError, match=r"duplicate slide_id.*twin.*own id"):
        read_slide_sheet(sheet)


def test_slide_id_with_slash_is_caught_at_parse_time(tmp_path):
    good = write_slide(tmp_path / "a.tif")
    sheet = write_sheet(tmp_path / "s.tsv", [("case/1", str(good), "")])
    with pytest.raises(SheetError, match=r"case/1.*must not.*contain '/'"):
        read_slide_sheet(sheet)


# --- caught by open_slide at the start of tile_slide, before any decoding ---


def test_missing_slide_file(tmp_path, no_decoding):
    with pytest.raises(SlideError, match=r"gone\.svs does not exist.*`path` column"):
        open_slide(tmp_path / "gone.svs")


def test_zero_byte_file(tmp_path, no_decoding):
    path = tmp_path / "empty.svs"
    path.touch()
    with pytest.raises(SlideError, match=r"empty\.svs is empty \(0 bytes\).*copy the slide again"):
        open_slide(path)


def test_png_renamed_svs(tmp_path, no_decoding):
    path = tmp_path / "photo.svs"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="PNG")
    with pytest.raises(SlideError, match=r"photo\.svs is a PNG image, not a TIFF.*convert it"):
        open_slide(path)


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.6, 0.9, 0.995, "inside the level-1 IFD"])
def test_truncated_tiff(tmp_path, no_decoding, keep):
    path = write_slide(tmp_path / "cut.tif")
    data = path.read_bytes()
    if isinstance(keep, str):  # level 0 complete, the pyramid's directory cut: tifffile alone would just drop it
        with tifffile.TiffFile(path) as tif:
            end = tif.pages[0].tags["SubIFDs"].value[0] + 4
    else:
        end = int(len(data) * keep)
    path.write_bytes(data[:end])
    with pytest.raises(SlideError, match=r"cut\.tif.*(truncated|corrupt).*copy the slide again"):
        open_slide(path)


def test_missing_mpp(tmp_path, no_decoding):
    path = write_slide(tmp_path / "nores.tif", mpp=None)
    with pytest.raises(SlideError, match=r"nores\.tif has no usable resolution.*`mpp` column.*slide sheet"):
        open_slide(path)
    # ...and the sheet's mpp is the fix.
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5


# --- the workflow: one bad slide fails its own job and names the slide, the good one still gets tiled ---


def test_workflow_tiles_good_slide_and_fails_bad_one_with_message(tmp_path):
    work = tmp_path / "work"
    shutil.copytree(ROOT / "config", work / "config")
    good = write_slide(tmp_path / "good.tif")
    bad = tmp_path / "bad.svs"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad, format="PNG")
    write_sheet(work / "sheet.tsv", [("good_slide", str(good), ""), ("bad_slide", str(bad), "")])
    (work / "override.yaml").write_text("slides: sheet.tsv\ntiling:\n  thumbnail_mpp: 2.0\n")
    cmd = [SNAKEMAKE, "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work)]
    cmd += ["--configfile", str(work / "override.yaml"), "--cores", "1", "--keep-going"]
    cmd += [f"results/detectors/main/tiles/{s}.patches.parquet" for s in ("good_slide", "bad_slide")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode != 0, proc.stderr[-3000:]
    patches = pd.read_parquet(work / "results" / "detectors" / "main" / "tiles" / "good_slide.patches.parquet")
    # The tissue block is the middle half of a 512 × 384 slide: 4 × 3 = 12 whole 64-px patches... plus edge ones.
    assert len(patches) >= 12 and (patches["slide_id"] == "good_slide").all()
    assert (work / "results" / "detectors" / "main" / "tiles" / "good_slide.qc.json").is_file()
    assert not (work / "results" / "detectors" / "main" / "tiles" / "bad_slide.patches.parquet").exists()
    log = (work / "results" / "logs" / "tile_slide" / "bad_slide.log").read_text()
    assert "slide 'bad_slide'" in log and "bad.svs is a PNG image, not a TIFF" in log
    assert "tile_slide" in proc.stderr and "bad_slide" in proc.stderr
