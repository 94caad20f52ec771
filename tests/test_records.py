"""Records: area downscaling, TFRecord round trip, sharding, manifest consistency, seeded reading."""

import json

import numpy as np
import pytest
import tensorflow as tf
from skimage.transform import downscale_local_mean

from proganomaly.data.records import (
    RecordsError,
    build_manifest,
    count_examples,
    downscale_area,
    make_dataset,
    read_manifest,
    verify_manifest,
    write_records,
)


def _patches(n, side=16, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield 100 * i, 7 * i, side, side, rng.integers(0, 256, (side, side, 3), dtype=np.uint8)


def _write(tmp_path, n=7, shard_max=3, sizes=(4, 8, 16), slide_id="s1"):
    out = tmp_path / slide_id
    res = write_records(_patches(n), slide_id, out, list(sizes), shard_max)
    manifest = tmp_path / f"{slide_id}.manifest.json"
    manifest.write_text(json.dumps(build_manifest(slide_id, out, res, max(sizes))))
    return manifest, res


def test_downscale_area_matches_block_mean_rounded_half_up():
    rng = np.random.default_rng(1)
    patch = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for size in (4, 8, 16):
        f = 32 // size
        ref = np.floor(downscale_local_mean(patch.astype(np.float64), (f, f, 1)) + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(downscale_area(patch, size), ref)
    np.testing.assert_array_equal(downscale_area(patch, 32), patch)
    # A half-way block mean rounds up: (0 + 1) / 2 -> 1.
    two = np.array([[[0], [1]], [[0], [1]]], dtype=np.uint8)
    assert downscale_area(two, 1)[0, 0, 0] == 1
    with pytest.raises(ValueError, match="cannot area-downscale"):
        downscale_area(patch, 5)


def test_round_trip_decodes_to_area_downscaled_source_exactly(tmp_path):
    manifest, _ = _write(tmp_path)
    sources = list(_patches(7))
    for size in (4, 8, 16):
        got = list(make_dataset([manifest], size, with_meta=True).as_numpy_iterator())
        assert len(got) == 7
        for ex, (x, y, _, _, patch) in zip(got, sources, strict=True):
            assert (ex["x"], ex["y"], ex["slide_id"]) == (x, y, b"s1")
            np.testing.assert_array_equal(ex["image"], downscale_area(patch, size))


def test_shards_and_manifest_match_the_records(tmp_path):
    manifest, _ = _write(tmp_path, n=7, shard_max=3)
    m = read_manifest(manifest)
    for size in ("4", "8", "16"):
        shards = m["resolutions"][size]["shards"]
        assert [s["count"] for s in shards] == [3, 3, 1]
        for shard in shards:
            n = sum(1 for _ in tf.data.TFRecordDataset(str(tmp_path / "s1" / shard["file"])))
            assert n == shard["count"]
        example = tf.train.Example.FromString(
            next(iter(tf.data.TFRecordDataset(str(tmp_path / "s1" / shards[0]["file"])))).numpy()
        )
        feats = example.features.feature
        assert feats["image/width"].int64_list.value[0] == int(size)
        assert feats["image/name"].bytes_list.value[0] == b"s1_x_0_y_0_width_16_height_16.png"
    assert count_examples([manifest, manifest], 8) == 14
    verify_manifest(manifest)
    assert not list((tmp_path / "s1").glob("*.partial"))


def test_verify_manifest_detects_corruption(tmp_path):
    manifest, res = _write(tmp_path)
    shard = tmp_path / "s1" / res["8"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(RecordsError, match="checksum"):
        verify_manifest(manifest)
    shard.unlink()
    with pytest.raises(RecordsError, match="missing"):
        verify_manifest(manifest)


def test_shuffled_reading_is_seeded(tmp_path):
    manifest, _ = _write(tmp_path, n=20, shard_max=4)

    def order(seed):
        ds = make_dataset([manifest], 4, shuffle=True, seed=seed, with_meta=True, batch_size=5)
        return [int(x) for b in ds.as_numpy_iterator() for x in b["x"]]

    a, b, c = order(3), order(3), order(4)
    assert a == b
    assert sorted(a) == sorted(c) == [100 * i for i in range(20)]
    assert a != c


def test_empty_slide_and_missing_resolution(tmp_path):
    manifest, res = _write(tmp_path, n=0)
    assert res["4"] == {"count": 0, "shards": []}
    assert count_examples([manifest], 4) == 0
    with pytest.raises(RecordsError, match="zero patches"):
        make_dataset([manifest], 4)
    with pytest.raises(RecordsError, match="no 32px records"):
        count_examples([manifest], 32)
    with pytest.raises(RecordsError, match="does not exist"):
        read_manifest(tmp_path / "nope.manifest.json")


def test_write_slide_records_applies_the_transform_before_downscaling(tmp_path):
    """The stain normalisation hook: records hold transform(patch) at every resolution."""
    import pandas as pd
    import tifffile

    from proganomaly.data.records import write_slide_records
    from proganomaly.data.slide import open_slide

    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    res = {"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(tmp_path / "s.tif", img, tile=(16, 16), photometric="rgb", **res)
    table = pd.DataFrame({"slide_id": ["s"] * 2, "x": [0, 32], "y": [16, 0], "width": [32, 32], "height": [32, 32]})
    with open_slide(tmp_path / "s.tif") as slide:
        out = write_slide_records(slide, table, tmp_path / "s", [8, 16, 32], 10, 32, transform=lambda p: 255 - p)
    manifest = tmp_path / "s.manifest.json"
    manifest.write_text(json.dumps(build_manifest("s", tmp_path / "s", out, 32)))
    for size in (8, 32):
        got = list(make_dataset([manifest], size).as_numpy_iterator())
        for image, (x, y) in zip(got, [(0, 16), (32, 0)], strict=True):
            np.testing.assert_array_equal(image, downscale_area(255 - img[y : y + 32, x : x + 32], size))
