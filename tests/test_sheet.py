"""Slide sheet checks that run at parse time, before any job."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proganomaly.data import sheet as sheet_module
from proganomaly.data.sheet import SLIDE_ID_PATTERN, SheetError, read_slide_sheet, validate_rows

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "slides.schema.yaml"

HEADER = "slide_id\tpath\tmpp\tsplit\tannotations\n"


def _sheet(tmp_path, rows):
    for name in ("a.tif", "b.tif"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    p = tmp_path / "slides.tsv"
    p.write_text(HEADER + "".join("\t".join(r) + "\n" for r in rows))
    return p


def test_good_sheet(tmp_path):
    a, b = str(tmp_path / "a.tif"), str(tmp_path / "b.tif")
    sheet = read_slide_sheet(
        _sheet(tmp_path, [("s1", a, "0.5", "train", ""), ("s2", b, "", "test", str(tmp_path / "a.geojson"))])
    )
    assert list(sheet.index) == ["s1", "s2"]
    assert sheet.loc["s1", "mpp"] == 0.5 and sheet.loc["s2", "mpp"] != sheet.loc["s2", "mpp"]
    assert sheet.loc["s1", "annotations"] is None


def test_workflow_made_paths_count_as_present(tmp_path):
    sheet = read_slide_sheet(_sheet(tmp_path, [("d", "results/demo/d.tif", "", "train", "results/demo/d.geojson")]))
    assert sheet.loc["d", "path"] == "results/demo/d.tif"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("s1", "{a}", "", "train", ""), ("s1", "{b}", "", "test", "")], "duplicate slide_id(s) ['s1']"),
        ([("x/y", "{a}", "", "train", "")], "slide 'x/y': slide_id must not"),
        ([("s1", "{tmp}/missing.svs", "", "train", "")], "slide 's1': path file {tmp}/missing.svs does not exist"),
        ([("s1", "{a}", "", "training", "")], "slide 's1': unknown split 'training'"),
        ([("s1", "{a}", "-2", "train", "")], "slide 's1': mpp '-2' is not a positive number"),
        (
            [("s1", "{a}", "", "test", "{tmp}/none.geojson")],
            "slide 's1': annotations file {tmp}/none.geojson does not exist",
        ),
        ([("s 1", "{a}", "", "train", "")], "slide 's 1': slide_id may only hold"),
        ([("-s1", "{a}", "", "train", "")], "slide '-s1': slide_id may only hold"),  # the schema's first character
        ([("sé", "{a}", "", "train", "")], "slide 'sé': slide_id may only hold"),  # ASCII only, as the schema
    ],
)
def test_bad_sheets_are_rejected_naming_the_slide(tmp_path, rows, message):
    fill = {"a": str(tmp_path / "a.tif"), "b": str(tmp_path / "b.tif"), "tmp": str(tmp_path)}
    rows = [tuple(v.format(**fill) for v in r) for r in rows]
    with pytest.raises(SheetError) as err:
        read_slide_sheet(_sheet(tmp_path, rows))
    assert message.format(**fill) in str(err.value)
    assert "slides.tsv" in str(err.value)


def test_missing_column_and_missing_sheet(tmp_path):
    p = tmp_path / "s.tsv"
    p.write_text("slide_id\tpath\nx\ty\n")
    with pytest.raises(SheetError, match="required column 'split'"):
        read_slide_sheet(p)
    with pytest.raises(SheetError, match="does not exist"):
        read_slide_sheet(tmp_path / "nope.tsv")


def test_slide_id_rule_is_the_schemas():
    """The sheet's own id check, the schema's pattern and the workflow's {slide} constraint are one pattern."""
    assert yaml.safe_load(SCHEMA.read_text())["properties"]["slide_id"]["pattern"] == f"^{SLIDE_ID_PATTERN}$"


def test_rows_are_validated_against_the_schema_in_one_pass(tmp_path):
    a = str(tmp_path / "a.tif")
    good = read_slide_sheet(_sheet(tmp_path, [("s1", a, "0.5", "train", ""), ("s2", a, "", "test", "")]))
    validate_rows(good, SCHEMA, "slides.tsv")
    bad = good.copy()
    bad.loc["s2", "split"] = "holdout"  # what read_slide_sheet refuses, here only to reach the schema
    bad.loc["s1", "mpp"] = -1.0
    with pytest.raises(SheetError) as err:
        validate_rows(bad, SCHEMA, "slides.tsv")
    text = str(err.value)
    assert text.startswith("slide sheet slides.tsv:")
    assert "slide 's1': mpp: -1.0 is less than or equal to the minimum of 0" in text
    assert "slide 's2': split: 'holdout' is not one of" in text


def test_each_annotation_file_is_parsed_once(tmp_path, monkeypatch):
    """Slides sharing one GeoJSON parse it once; a bad one still names every slide that uses it."""
    calls = []
    real = sheet_module.read_polygons
    monkeypatch.setattr(sheet_module, "read_polygons", lambda path: calls.append(path) or real(path))
    a, g = str(tmp_path / "a.tif"), str(tmp_path / "a.geojson")
    rows = [(f"s{i}", a, "", "test", g) for i in range(5)]
    read_slide_sheet(_sheet(tmp_path, rows))
    assert calls == [g]
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    rows = [(f"s{i}", a, "", "test", str(bad)) for i in range(3)]
    with pytest.raises(SheetError) as err:
        read_slide_sheet(_sheet(tmp_path, rows))
    assert all(f"slide 's{i}': annotations" in str(err.value) for i in range(3))


def test_a_target_of_a_slide_not_in_the_sheet_names_the_sheet(tmp_path):
    """{slide} is constrained to the id syntax, not to the sheet's ids: an unknown id fails in the input function,
    with a message naming the sheet, before any job runs."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "workflow" / "Snakefile")]
    cmd += ["--directory", str(tmp_path), "-n", "--cores", "1"]
    cmd += ["results/detectors/main/tiles/no_such_slide.patches.parquet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert "slide 'no_such_slide' is not in the slide sheet config/slides.tsv" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
