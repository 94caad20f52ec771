"""SavedModel inference throughput (patches/s, all outputs fetched) of the exported detector.

Anchor: GANomaly, U-Net skips, latent 512, filters [[64,64],[64,64],[64,64],[32,32],[16,16]] (5 blocks, 64 px);
at 256 px the same extended with [16,16],[16,16] (7 blocks). Random weights (throughput does not depend on them),
built with proganomaly.model.networks. Three SavedModels per size, each saved to disk and loaded back:
  original-like  the original's output set (pcead-spec §7.3 items 1–3, 6–13: sigmoid and per-image min–max images,
                 double-sigmoid d² image, ±1 flags as float), float32 input, no XLA
  ours           our outputs (uint8 in, uint8 reconstruction), no XLA (export.jit_compile false, as the demo)
  ours+xla       the same with jit_compile=True in the serving function (export.jit_compile, the schema default)
Each cell is the median over timed calls (after warm-up) of batch/seconds; ratios are against original-like. Quiet
2-core AMD EPYC (AVX2), 2026-12-08, 64 px batch 16: 153 / 187 / 250 patches/s, ours 1.22x, ours+xla 1.63x. The
default scorer's path (combined: critic + texture statistics) is timed by bench_serving.py.

Run: .venv/bin/python tests/benchmarks/bench_export.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

from proganomaly.config import Config, validate_config
from proganomaly.detector import export
from proganomaly.model.architectures import build_networks
from proganomaly.model.io import TrainedModel
from proganomaly.model.networks import num_blocks
from proganomaly.scoring import make_scorer

ANCHOR_FILTERS = [[64, 64], [64, 64], [64, 64], [32, 32], [16, 16]]


def generator(size: int):
    """The issue-3 TrainedModel (final stable phase) over freshly built networks of the anchor configuration."""
    blocks = num_blocks(size)
    filters = ANCHOR_FILTERS + [[16, 16]] * (blocks - len(ANCHOR_FILTERS))
    raw = validate_config({"model": {"architecture": "ganomaly", "filters": filters, "latent_size": 512}})
    return TrainedModel(build_networks(Config.from_dict(raw).model, size, seed=0), size), filters


def minmax_img(v):
    lo = tf.reduce_min(v, axis=(1, 2, 3), keepdims=True)
    hi = tf.reduce_max(v, axis=(1, 2, 3), keepdims=True)
    return tf.math.divide_no_nan(v - lo, hi - lo)


def original_d2(e, mean, precision):
    """d² as the original served it (a per-pixel matvec), kept here so that speed-ups of tf_stats.tf_mahalanobis_d2
    do not also speed up the baseline."""
    y = e - tf.constant(np.asarray(mean, np.float32))
    return tf.reduce_sum(tf.linalg.matvec(tf.constant(np.asarray(precision, np.float32)), y) * y, axis=-1)


def original_like_module(gen, gauss: dict, tau: float):
    """The original's served outputs (float32 [-1, 1] input, no XLA), for a like-for-like baseline."""
    s = gen.patch_size_px
    mod = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec((None, s, s, 3), tf.float32, name="query_images")])
    def serve(x):
        z = gen.encode(x)
        xhat = gen.reconstruct(x)
        e = tf.abs(x - xhat)
        d2 = original_d2(e, gauss["mean"], gauss["precision"])[..., None]
        flags = tf.where(d2 > tau, 1.0, -1.0)
        count = tf.reduce_sum(tf.cast(flags > 0, tf.int32), axis=(1, 2, 3))
        return {
            "query_images": x,
            "query_gen_encoded_logits": z,
            "query_gen_encoded_images": xhat,
            "query_anomaly_images_sigmoid": 4 * tf.sigmoid(e) - 3,
            "query_anomaly_images_linear": 2 * minmax_img(e) - 1,
            "query_mahalanobis_distances": d2[..., 0],
            "query_mahalanobis_distance_images_sigmoid": 4 * tf.sigmoid(tf.sigmoid(d2)) - 3,
            "query_mahalanobis_distance_images_linear": 2 * minmax_img(d2) - 1,
            "query_pixel_anomaly_flag_images": flags,
            "query_pixel_anomaly_flag_counts": count,
            "query_pixel_anomaly_flag_percentages": tf.cast(count, tf.float32) / (s * s),
        }

    mod.model_variables = list(serve.get_concrete_function().variables)  # TrainedModel's dataclass hides them
    mod.serve = serve
    return mod


def timed(fn, feed, min_calls: int, min_s: float) -> float:
    """Median patches/s over at least min_calls calls and min_s seconds, every output copied to host."""
    for _ in range(2):
        {k: v.numpy() for k, v in fn(**feed).items()}
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_s:
        t0 = time.perf_counter()
        {k: v.numpy() for k, v in fn(**feed).items()}
        times.append(time.perf_counter() - t0)
    n = next(iter(feed.values())).shape[0]
    return n / statistics.median(times)


def bench_size(size: int, batches: list[int], min_calls: int, min_s: float, workdir: Path) -> list[tuple]:
    gen, filters = generator(size)
    gauss = {"mean": np.full(3, 0.2), "precision": np.eye(3) * 20.0}
    variants = {}
    orig = original_like_module(gen, gauss, 5.0)
    tf.saved_model.save(orig, str(workdir / f"orig{size}"), signatures={"serving_default": orig.serve})
    variants["original-like"] = (tf.saved_model.load(str(workdir / f"orig{size}")), "query_images", np.float32)
    for name, jit in (("ours", False), ("ours+xla", True)):
        export.save_detector(make_scorer("rgb_error", gen), gauss, 5.0, workdir / f"{name}{size}", jit_compile=jit)
        variants[name] = (tf.saved_model.load(str(workdir / f"{name}{size}")), "patches", np.uint8)
    rng = np.random.default_rng(0)
    rows = []
    for n in batches:
        u8 = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        rates = {}
        for name, (loaded, key, dtype) in variants.items():
            arr = u8 if dtype == np.uint8 else (u8 / 127.5 - 1).astype(np.float32)
            rates[name] = timed(loaded.signatures["serving_default"], {key: tf.constant(arr)}, min_calls, min_s)
        rows.append((size, n, rates["original-like"], rates["ours"], rates["ours+xla"]))
        o = rates["original-like"]
        print(
            f"{size:>4} {n:>5} {o:>14.1f} {rates['ours']:>10.1f} {rates['ours+xla']:>10.1f}"
            f" {rates['ours'] / o:>10.2f} {rates['ours+xla'] / o:>10.2f}",
            flush=True,
        )
    # sanity: the XLA export serves the same numbers as the plain one
    check = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    a = variants["ours"][0].signatures["serving_default"](patches=tf.constant(check))
    b = variants["ours+xla"][0].signatures["serving_default"](patches=tf.constant(check))
    rel = {
        k: float(np.max(np.abs(a[k].numpy().astype(np.float64) - b[k].numpy())) / np.max(np.abs(a[k].numpy())))
        for k in ("anomaly_map", "mahalanobis_d2")
    }
    print(f"     max |ours − ours+xla| / max |ours|: {rel}; generator filters {filters}")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes and shorter timing")
    args = ap.parse_args()
    min_calls, min_s = (3, 1.0) if args.quick else (7, 3.0)
    b64 = [1, 16, 64] if args.quick else [1, 2, 4, 8, 16, 32, 64]
    b256 = [1, 8] if args.quick else [1, 4, 16]
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print(f"tensorflow {tf.__version__}, devices {devices}, {os.cpu_count()} CPUs")
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
    print(
        f"{'px':>4} {'batch':>5} {'original-like':>14} {'ours':>10} {'ours+xla':>10} {'ours/orig':>10} {'xla/orig':>10}"
        "   (patches/s)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bench_size(64, b64, min_calls, min_s, Path(tmp))
        bench_size(256, b256, min_calls, min_s, Path(tmp))
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
