"""Slide sheet checks that run at parse time, before any job."""

import pytest

from proganomaly.data.sheet import SheetError, read_slide_sheet

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
