"""QuPath GeoJSON: round trips, repairs that are reported, and errors that name the file and the feature."""

import json

import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping

from proganomaly.data.geojson import GeoJSONError, read_polygons, write_polygons


def write(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def feat(geom, name="Tumor", **extra):
    props = {"objectType": "annotation", "classification": {"name": name, "color": [1, 2, 3]}}
    return {
        "type": "Feature",
        "geometry": geom if isinstance(geom, dict) else mapping(geom),
        "properties": props,
    } | extra


def test_round_trip_with_hole_and_multipolygon(tmp_path):
    holed = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(2, 2), (4, 2), (4, 4), (2, 4)]])
    multi = MultiPolygon([box(20, 20, 25, 25), box(30, 30, 31, 32)])
    path = tmp_path / "out" / "pred.geojson"
    write_polygons(path, [holed, multi, Polygon()], measurements=[{"area_um2": 1.5}, {"area_um2": 2}, {}], slide_id="s")
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and doc["proganomaly"] == {"slide_id": "s"}
    assert len(doc["features"]) == 2  # the empty geometry is not exported
    props = doc["features"][0]["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"] == {"name": "Anomaly", "color": [230, 40, 40]}
    assert props["measurements"] == {"area_um2": 1.5}
    geoms, repairs = read_polygons(path)
    assert repairs == []
    assert geoms[0].equals(holed) and geoms[1].equals(multi)
    assert shapely.union_all(geoms).area == 96 + 25 + 2


def test_positional_signature_used_by_the_demo_still_works(tmp_path):
    path = tmp_path / "demo.geojson"
    write_polygons(path, [box(0, 0, 1, 1)], "Foreign", [0, 0, 255], source="demo")
    doc = json.loads(path.read_text())
    assert doc["features"][0]["properties"]["classification"]["name"] == "Foreign"
    assert doc["proganomaly"] == {"source": "demo"}


def test_invalid_geometry_is_repaired_and_reported(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}
    path = write(tmp_path / "a.geojson", [feat(bowtie, id="bow")])
    (geom,), repairs = read_polygons(path)
    assert geom.is_valid and geom.area == pytest.approx(2.0)
    assert (
        len(repairs) == 1
        and "a.geojson" in repairs[0]
        and "feature 0 (bow)" in repairs[0]
        and "make_valid" in repairs[0]
    )


def test_points_are_skipped_and_reported_and_classes_filter(tmp_path):
    path = write(
        tmp_path / "b.geojson",
        [feat({"type": "Point", "coordinates": [1, 2]}), feat(box(0, 0, 1, 1)), feat(box(5, 5, 6, 6), name="Other")],
    )
    geoms, repairs = read_polygons(path)
    assert len(geoms) == 2 and "feature 0" in repairs[0] and "Point skipped" in repairs[0]
    geoms, _ = read_polygons(path, classes={"Other"})
    assert len(geoms) == 1 and geoms[0].equals(box(5, 5, 6, 6))


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        (None, "feature 1: missing or malformed 'geometry'"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, "feature 1: malformed Polygon"),
        ({"type": "Polygon", "coordinates": "oops"}, "feature 1: malformed Polygon"),
        (
            {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, "x"], [1, 1], [0, 0]]]]},
            "feature 1: malformed MultiPolygon",
        ),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, float("nan")], [1, 1], [0, 0]]]}, "feature 1: non-finite"),
    ],
)
def test_malformed_geometry_names_file_and_feature(tmp_path, geometry, message):
    bad = {"type": "Feature", "geometry": geometry, "properties": {}}
    path = write(tmp_path / "bad.geojson", [feat(box(0, 0, 1, 1)), bad])
    with pytest.raises(GeoJSONError, match=r"bad\.geojson") as err:
        read_polygons(path)
    assert message in str(err.value)


def test_malformed_documents(tmp_path):
    (tmp_path / "x.geojson").write_text("{not json")
    with pytest.raises(GeoJSONError, match=r"x\.geojson: not valid JSON"):
        read_polygons(tmp_path / "x.geojson")
    with pytest.raises(GeoJSONError, match=r"missing\.geojson: annotation file does not exist"):
        read_polygons(tmp_path / "missing.geojson")
    (tmp_path / "y.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": []}))
    with pytest.raises(GeoJSONError, match=r"y\.geojson: expected a FeatureCollection"):
        read_polygons(tmp_path / "y.geojson")
    write(tmp_path / "z.geojson", [{"type": "Nope"}])
    with pytest.raises(GeoJSONError, match=r"z\.geojson: feature 0: not a GeoJSON Feature"):
        read_polygons(tmp_path / "z.geojson")


def test_measurement_count_must_match(tmp_path):
    with pytest.raises(ValueError, match="1 measurement records for 2 geometries"):
        write_polygons(tmp_path / "m.geojson", [box(0, 0, 1, 1), box(1, 1, 2, 2)], measurements=[{}])


def test_features_carry_deterministic_uuid_ids_and_reruns_are_byte_identical(tmp_path):
    import uuid

    geoms = [box(0, 0, 1, 1), Polygon(), box(2, 2, 3, 3)]
    first, second = tmp_path / "a.geojson", tmp_path / "b.geojson"
    write_polygons(first, geoms, slide_id="s1")
    write_polygons(second, geoms, slide_id="s1")
    assert first.read_bytes() == second.read_bytes()
    ids = [f["id"] for f in json.loads(first.read_text())["features"]]
    assert len(set(ids)) == 2 and all(uuid.UUID(i).version == 5 for i in ids)
    write_polygons(second, geoms, slide_id="s2")
    assert not set(ids) & {f["id"] for f in json.loads(second.read_text())["features"]}


def test_tiles_are_qupath_tiles_with_scores_as_measurements(tmp_path):
    import pandas as pd

    from proganomaly.data.geojson import write_tiles

    patches = pd.DataFrame(
        {"slide_id": "s", "x": [0, 48], "y": [96, 96], "width": [64, 64], "height": [64, 64],
         "flagged_fraction": [0.25, 0.0], "mean_d2": [3.5, 1.0], "max_d2": [9.0, float("nan")], "score": [0.4, 0.1]}
    )  # fmt: skip
    path = tmp_path / "tiles.geojson"
    write_tiles(path, patches, "s")
    doc = json.loads(path.read_text())  # strict JSON: the NaN became null
    # Without a stride the whole patches are written, and the file says that they overlap.
    assert doc["proganomaly"]["slide_id"] == "s" and doc["proganomaly"]["coordinates"] == "level-0 px"
    assert "overlap" in doc["proganomaly"]["tiles"] and "stride_level0_px" not in doc["proganomaly"]
    first = doc["features"][0]
    assert first["properties"]["objectType"] == "tile" and "classification" not in first["properties"]
    assert first["properties"]["measurements"] == {
        "flagged_fraction": 0.25,
        "mean_d2": 3.5,
        "max_d2": 9.0,
        "score": 0.4,
    }
    assert shapely.geometry.shape(first["geometry"]).equals(box(0, 96, 64, 160))
    assert doc["features"][1]["properties"]["measurements"]["max_d2"] is None
    assert "NaN" not in path.read_text()


def test_predicted_polygons_get_a_class_of_their_own_and_their_mean_score():
    import numpy as np

    from proganomaly.data.geojson import predicted_class
    from proganomaly.maps.zonal import mean_inside

    assert predicted_class("Anomaly") == "Anomaly (predicted)"
    values = np.zeros((10, 10), np.float32)
    values[2:4, 2:6] = 1.0
    values[3, 5] = np.nan
    # ds 2: map pixel (r, c) has its centre at level-0 (2c + 1, 2r + 1)
    means = mean_inside(values, [box(4, 4, 12, 8), box(0, 0, 8, 4), box(40, 40, 50, 50)], 2.0)
    assert means[0] == 1.0  # the NaN pixel is left out
    assert means[1] == 0.0
    assert means[2] != means[2]  # outside the map: NaN


def test_sheet_parses_every_annotation_file_before_any_job(tmp_path):
    from proganomaly.data.sheet import SheetError, read_slide_sheet

    slide = tmp_path / "s.tif"
    slide.write_bytes(b"II*\x00")
    good = write(tmp_path / "good.geojson", [feat(box(0, 0, 1, 1))])
    bad = write(tmp_path / "bad.geojson", [feat(box(0, 0, 1, 1)), {"type": "Feature", "geometry": None}])
    sheet = tmp_path / "sheet.tsv"
    rows = [("a", good), ("b", bad)]
    sheet.write_text("slide_id\tpath\tsplit\tannotations\n" + "".join(f"{s}\t{slide}\ttest\t{a}\n" for s, a in rows))
    with pytest.raises(SheetError) as err:
        read_slide_sheet(sheet)
    message = str(err.value)
    assert (
        "slide 'b'" in message and "bad.geojson: feature 1" in message and "missing or malformed 'geometry'" in message
    )
    assert "slide 'a'" not in message
    sheet.write_text("slide_id\tpath\tsplit\tannotations\n" + f"a\t{slide}\ttest\t{good}\n")
    assert read_slide_sheet(sheet).loc["a", "annotations"] == str(good)


def test_zero_features_is_a_normal_only_slide(tmp_path):
    """A reviewed slide with nothing anomalous: zero features read as no regions, not an error."""
    from proganomaly.evaluation import classes, lesions

    path = tmp_path / "normal.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    assert read_polygons(path) == ([], [])
    assert classes.feature_classes(path) == {} and classes.class_regions(path) == ({}, {})
    assert classes.feature_regions(path) == [] and classes.part_regions({}, {}) == {}
    geoms, table = lesions.slide_lesions(path, shapely.MultiPolygon(), box(0, 0, 10, 10))
    assert geoms == [] and len(table) == 0 and list(table.columns) == list(lesions.TABLE_COLUMNS)


def test_each_feature_is_one_lesion(tmp_path):
    from proganomaly.evaluation import classes, lesions

    feats = [
        {"type": "Feature", "geometry": mapping(g), "properties": {"classification": {"name": n}}}
        for g, n in (
            (box(0, 0, 4, 4), "T"),
            (box(10, 10, 12, 12), "I"),
            (box(2, 2, 6, 6), "T"),
            (box(50, 50, 60, 60), "T"),
        )
    ]
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    assert [c for _, c, _ in classes.feature_regions(path)] == ["T", "T", "T", "I"]
    # The last T lies outside the tissue and is left out; overlapping features stay separate lesions.
    geoms, table = lesions.slide_lesions(path, None, box(0, 0, 20, 20))
    assert table["class"].tolist() == ["T", "T", "I"] and table["area"].tolist() == [16.0, 16.0, 4.0]
    assert table["lesion"].tolist() == [0, 1, 2] and geoms[1].equals(box(2, 2, 6, 6))


def test_prediction_ids_never_collide_with_annotation_or_tile_ids(tmp_path):
    """Annotations (the demo's and write_polygons' ids: uuid5 of slide/annotation/index), tiles and predictions of the
    same slide get disjoint ids; predictions at another operating point get other ids; reruns the same ones."""
    import uuid

    import pandas as pd

    from proganomaly.data.geojson import feature_id, prediction_id, write_predictions, write_tiles

    geoms = [box(i, i, i + 1, i + 1) for i in range(50)]
    slide = "s1"
    write_polygons(tmp_path / "truth.geojson", geoms, slide_id=slide)
    write_predictions(tmp_path / "pred.geojson", geoms, slide, 0.3, 1.5, "Anomaly (predicted)", [1, 2, 3])
    patches = pd.DataFrame({"x": range(50), "y": 0, "width": 4, "height": 4})
    write_tiles(tmp_path / "tiles.geojson", patches, slide, stride=2)

    def ids(name):
        return [f["id"] for f in json.loads((tmp_path / name).read_text())["features"]]

    truth, pred, tiles = ids("truth.geojson"), ids("pred.geojson"), ids("tiles.geojson")
    assert truth == [feature_id(slide, "annotation", i) for i in range(50)]
    assert pred == [prediction_id(slide, 0.3, 1.5, i) for i in range(50)]
    assert len(set(truth) | set(pred) | set(tiles)) == 150 and all(uuid.UUID(i).version == 5 for i in pred)
    # The documented name: uuid5 of "prediction/<slide>/<threshold>/<dilation>/<index>" in the module's namespace.
    namespace = uuid.UUID("5a0d6f3e-7f3b-4e59-9a52-3f7d0c8b1e21")
    assert pred[0] == str(uuid.uuid5(namespace, "prediction/s1/0.3/1.5/0"))
    assert truth[0] == str(uuid.uuid5(namespace, "s1/annotation/0"))
    assert not {prediction_id(slide, 0.35, 1.5, i) for i in range(50)} & set(pred)
    assert not {prediction_id(slide, 0.3, 2.0, i) for i in range(50)} & set(pred)
    # A slide named like a prediction prefix cannot produce a prediction's name either (3 parts vs 5).
    assert not {feature_id("prediction", "annotation", i) for i in range(50)} & {
        prediction_id("prediction", 0.3, 1.5, i) for i in range(50)
    }
    write_predictions(tmp_path / "again.geojson", geoms, slide, 0.3, 1.5, "Anomaly (predicted)", [1, 2, 3])
    assert (tmp_path / "again.geojson").read_bytes() == (tmp_path / "pred.geojson").read_bytes()
    doc = json.loads((tmp_path / "pred.geojson").read_text())
    assert doc["proganomaly"]["slide_id"] == slide
    assert {f["properties"]["classification"]["name"] for f in doc["features"]} == {"Anomaly (predicted)"}
