"""Inference: a tiny stand-in SavedModel with the export contract's signature, run over a numpy 'slide'."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from proganomaly.detector.load import REQUIRED_OUTPUTS, DetectorError, load_detector
from proganomaly.maps import inference, stitching

S = 8
TAU = 40.0


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """Stand-in with the export contract: reconstruction = 3×3 box blur (uint8), d² = 100·mean squared error,
    flags = d² > τ (uint8 0/1)."""
    import tensorflow as tf

    class Detector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, S, S, 3), tf.uint8, name="patches")])
        def serve(self, patches):
            x = tf.cast(patches, tf.float32) / 127.5 - 1.0
            recon = tf.nn.avg_pool2d(x, 3, 1, "SAME")
            err = tf.abs(x - recon)
            d2 = 100.0 * tf.reduce_mean(tf.square(err), axis=-1)
            flags = tf.cast(d2 > TAU, tf.uint8)
            count = tf.reduce_sum(tf.cast(flags, tf.int32), axis=[1, 2])
            return {
                "reconstruction": tf.cast(tf.round(tf.clip_by_value((recon + 1.0) * 127.5, 0.0, 255.0)), tf.uint8),
                "anomaly_map": err,
                "mahalanobis_d2": d2,
                "flags": flags,
                "flagged_count": count,
                "flagged_fraction": tf.cast(count, tf.float32) / float(S * S),
            }

    path = tmp_path_factory.mktemp("export") / "saved_model"
    module = Detector()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


class FakeSlide:
    def __init__(self, image):
        self.image = image
        self.dimensions = (image.shape[1], image.shape[0])
        self.mpp = 0.5

    def read_region(self, x, y, w, h):
        out = np.full((h, w, 3), 255, np.uint8)  # outside the slide reads as white background
        part = self.image[y : y + h, x : x + w]
        out[: part.shape[0], : part.shape[1]] = part
        return out


def read_patch(slide, x, y, size_l0, out_px):
    region = slide.read_region(x, y, size_l0, size_l0).astype(np.float64)
    f = size_l0 // out_px
    return np.rint(region.reshape(out_px, f, out_px, f, 3).mean(axis=(1, 3))).astype(np.uint8)


def _table(coords, size):
    return pd.DataFrame({"x": [c[0] for c in coords], "y": [c[1] for c in coords], "width": size, "height": size})


def test_load_detector_reads_the_contract(saved_model, tmp_path):
    det = load_detector(saved_model)
    assert det.patch_size_px == S
    assert set(REQUIRED_OUTPUTS) <= set(det.outputs)
    with pytest.raises(DetectorError, match="export_model"):
        load_detector(tmp_path / "nothing")


def test_patch_table_errors_name_the_file():
    with pytest.raises(inference.InferenceError, match=r"tiles/s\.patches\.parquet.*\['width', 'height'\]"):
        inference.check_patch_table(pd.DataFrame({"x": [0], "y": [0]}), "results/tiles/s.patches.parquet")
    t = inference.check_patch_table(_table([(8, 8), (0, 8), (4, 0)], 8), "t")
    assert t[["x", "y"]].values.tolist() == [[4, 0], [0, 8], [8, 8]]


@pytest.mark.parametrize(("ds", "size"), [(1, 8), (2, 16)])
def test_run_inference_scores_and_stitches(saved_model, tmp_path, ds, size):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    slide = FakeSlide(image)
    stride = size * 3 // 4  # overlapping patches
    coords = [(x, y) for y in range(0, 50 - size + 1, stride) for x in range(0, 70, stride)]  # last column crosses
    table = inference.check_patch_table(_table(coords, size), "t")
    det = load_detector(saved_model)
    grid = stitching.MapGrid(70, 50, ds, slide.mpp)
    canvas = stitching.create_canvas(tmp_path / "c", grid, inference.CANVAS_MAPS)
    result, timings = inference.run_inference(
        slide, table, det, canvas, slide_id="s1", batch_size=3, prefetch_batches=2, read_patch=read_patch
    )
    # Per-patch table against the detector called directly on the same patches.
    batch = np.stack([read_patch(slide, x, y, size, S) for x, y in zip(table.x, table.y, strict=True)])
    direct = det(batch)
    assert result["slide_id"].eq("s1").all() and len(result) == len(table)
    np.testing.assert_array_equal(result[["x", "y"]].to_numpy(), table[["x", "y"]].to_numpy())
    d2 = direct["mahalanobis_d2"].reshape(len(batch), -1)
    np.testing.assert_allclose(result["mean_d2"], d2.mean(1), rtol=1e-5)
    np.testing.assert_allclose(result["max_d2"], d2.max(1), rtol=1e-5)
    np.testing.assert_allclose(result["flagged_fraction"], direct["flagged_fraction"], rtol=1e-6)
    np.testing.assert_allclose(result["score"], result["mean_d2"])
    assert result["flagged_fraction"].between(0, 1).all() and result["flagged_fraction"].max() > 0
    assert timings["patches"] == len(table) and timings["model_s"] > 0
    # The stitched query thumbnail reproduces the slide where patches lie inside it (identical pixels average to
    # themselves; at ds 2 the box average of the slide).
    thumb = stitching.finalize_map(canvas, "thumbnail", tmp_path / "t.npy")[:, :]
    inside = ~np.zeros((grid.height, grid.width), bool)
    if ds == 1:
        want = image.astype(np.float64)
    else:
        want = image.reshape(25, 2, 35, 2, 3).mean(axis=(1, 3))
    covered = canvas.count[:, :] > 0
    inside &= covered
    inside[:, (70 - size) // ds :] = False  # patches crossing the right edge also hold white padding
    np.testing.assert_allclose(thumb[inside], want[inside], atol=0.5 + 1e-4)


def test_zero_patches_warn_and_give_an_empty_table(saved_model, tmp_path, caplog):
    det = load_detector(saved_model)
    canvas = stitching.create_canvas(tmp_path / "c", stitching.MapGrid(20, 20, 1, 0.5), inference.CANVAS_MAPS)
    with caplog.at_level(logging.WARNING, logger="proganomaly"):
        result, _ = inference.run_inference(
            FakeSlide(np.zeros((20, 20, 3), np.uint8)), _table([], 8), det, canvas, slide_id="e", batch_size=4,
            prefetch_batches=1, read_patch=read_patch,
        )  # fmt: skip
    assert "no tissue patches" in caplog.text
    assert len(result) == 0 and {"slide_id", "x", "y", "mean_d2", "score"} <= set(result.columns)
    assert not canvas.count[:, :].any()


def test_prefetch_keeps_order_and_reraises():
    assert list(inference.prefetch(iter(range(20)), depth=3)) == list(range(20))

    def broken():
        yield 1
        raise RuntimeError("unreadable region at (0, 0)")

    with pytest.raises(RuntimeError, match="unreadable region"):
        list(inference.prefetch(broken(), depth=2))


def test_batch_maps_accepts_original_and_new_flag_conventions():
    batch = np.zeros((2, 4, 4, 3), np.uint8)
    out = {
        "reconstruction": np.full((2, 4, 4, 3), 1.0, np.float32),
        "anomaly_map": np.ones((2, 4, 4, 3), np.float32),
        "mahalanobis_d2": np.ones((2, 4, 4), np.float32),
        "flags": np.where(np.arange(32).reshape(2, 4, 4, 1) % 2, 1.0, -1.0),  # original's ±1, (N, S, S, 1)
    }
    maps = inference.batch_maps(batch, out)
    assert maps["flags"].shape == (2, 4, 4) and maps["flags"].sum() == 16
    assert (maps["reconstruction"] == 255).all() and maps["anomaly_map"].shape == (2, 4, 4)


def test_pool_reader_and_writer_thread_give_the_sequential_result(saved_model, tmp_path):
    """Reads through a thread pool and stitching in a writer thread leave the table and canvases bit-identical."""
    image = np.random.default_rng(9).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    coords = [(x, y) for y in range(0, 50, 6) for x in range(0, 80, 6)]
    table = inference.check_patch_table(_table(coords, 16), "t")
    det = load_detector(saved_model)
    runs = {}
    for name, threads, prefetch, queue in (("sequential", 1, 0, 0), ("overlapped", 3, 2, 2)):
        canvas = stitching.create_canvas(tmp_path / name, stitching.MapGrid(90, 60, 1, 0.5), inference.CANVAS_MAPS)
        result, timings = inference.run_inference(
            FakeSlide(image), table, det, canvas, slide_id="s", batch_size=5, prefetch_batches=prefetch,
            read_patch=read_patch, read_threads=threads, write_queue_batches=queue, border_px=1,
        )  # fmt: skip
        assert {"read_s", "wait_s", "model_s", "write_s", "stall_s", "drain_s"} <= set(timings)
        runs[name] = (result, {n: canvas.sums[n][:, :] for n in canvas.sums} | {"count": canvas.count[:, :]})
    pd.testing.assert_frame_equal(runs["sequential"][0], runs["overlapped"][0])
    for name, arr in runs["sequential"][1].items():
        np.testing.assert_array_equal(arr, runs["overlapped"][1][name], err_msg=name)


def test_writer_errors_reraise_in_the_caller():
    def handle(item):
        if item == 3:
            raise RuntimeError("canvas write failed at item 3")

    writer = inference.Writer(handle, depth=1)
    with pytest.raises(RuntimeError, match="item 3"):
        for i in range(50):
            writer.submit(i)
        writer.close()
    writer.close(raise_error=False)  # after the error: returns, the thread is gone


def test_detector_split_over_two_devices_gives_the_outputs_of_one():
    """resources.gpus.inference: 2 on 2 logical CPUs: a real exported model, loaded once under the MirroredStrategy,
    serves every batch (1 patch, an odd 5 that needs padding, 8) in patch order with the shapes and dtypes of one
    device, bit for bit what one device gives for the same shares (ceil(n/2) patches per call). Against one call over
    the whole batch, oneDNN's float32 convolutions may round differently with the batch size (measured: 1e-5 in
    anomaly_map at n = 8): floats within 1e-4 (relative for d², absolute otherwise), at most 1 % of flags flipped."""
    from fresh_python import run_fresh_python

    code = """
        import json, pathlib, tempfile
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from proganomaly.common.devices import replica_strategy
        from proganomaly.config import Config, validate_config
        from proganomaly.detector.export import save_detector
        from proganomaly.detector.load import load_detector
        from proganomaly.model import io
        from proganomaly.model.architectures import build_networks
        from proganomaly.scoring import make_scorer

        d = pathlib.Path(tempfile.mkdtemp())
        cfg = Config.from_dict(validate_config({"model": {"filters": [[16, 16], [8, 8], [8, 8]], "latent_size": 32}}))
        io.save_weights(build_networks(cfg.model, 16, seed=5), d / io.WEIGHTS)
        (d / io.MODEL_JSON).write_text(json.dumps(io.model_record(cfg.model, 16, 5)))
        gauss = {"mean": np.full(3, 0.1), "precision": np.eye(3) * 50.0}
        save_detector(make_scorer("rgb_error", io.load_trained(d)), gauss, 5.0, d / "sm")
        one = load_detector(d / "sm")
        strategy = replica_strategy(2, "resources.gpus.inference", devices=["/cpu:0", "/cpu:1"])
        two = load_detector(d / "sm", strategy=strategy)
        rng = np.random.default_rng(2)
        for n in (1, 5, 8):
            images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
            a, shares, b = one(images), one(images, batch_size=-(-n // 2)), two(images)
            assert set(a) == set(b) == set(one.outputs)
            for k in one.outputs:
                assert a[k].shape == b[k].shape and a[k].shape[0] == n and a[k].dtype == b[k].dtype, k
                # Not bitwise: with two logical devices running at once oneDNN may pick other kernels (thread
                # counts) than one device running the same shares (measured 7e-6 absolute on one CPU).
                if b[k].dtype.kind == "f" and k != "flags":
                    np.testing.assert_allclose(b[k], shares[k], rtol=1e-4, atol=1e-4, err_msg=k)
            for k, rtol, atol in (("anomaly_map", 0, 1e-4), ("mahalanobis_d2", 1e-4, 1e-4)):
                np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, err_msg=k)
            assert np.mean(a["flags"] != b["flags"]) <= 0.01
            assert 0 < a["flags"].sum() < a["flags"].size
        print("ok", strategy.num_replicas_in_sync)
        """
    assert run_fresh_python(code, timeout=300).stdout.split()[-2:] == ["ok", "2"]
