"""Training throughput of the anchor configuration: fused step (ours) vs an original-style pair of steps.

Anchor: GANomaly, 5 blocks to 64 px, filters [[64,64],[64,64],[64,64],[32,32],[16,16]], latent 512, batch 16,
20 % shuffled masks, U-Net skips, critic with minibatch stddev and GP, float32. One "pair" = one critic update and one
generator update; images/s counts one batch per pair (as the original's numbers do).

original-style: two compiled functions as in the original loop, each computing every loss (G forward, D on real,
fake and GP mix) on its own batch, applying D's gradient in the first and G's in the second. It reuses our
vectorised masks, so it understates the original's cost (whose masks loop per example in Python map_fn).

Each (variant, resolution) runs in a fresh process so that peak RSS is its own.
Run: .venv/bin/python tests/benchmarks/bench_training.py [--steps 12] [--threads 2]

--xla: the demo model (config/config.yaml's model section, batch 16) with training.jit_compile off ("demo") and on
("demo-xla"): s per step and the first call (trace + compile) per resolution, for docs/cluster.md.
--precision: the demo model in float32 ("demo") and with training.precision bfloat16 ("demo-bf16"; float32 master
weights and losses, as the workflow trains), the two variants alternating per resolution in fresh processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL_S = {16: 0.116, 32: 0.200, 64: 0.348}  # original, s per critic+generator pair on this machine type
ANCHOR = {
    "tiling": {"patch_size_px": 64},
    "model": {"filters": [[64, 64], [64, 64], [64, 64], [32, 32], [16, 16]], "latent_size": 512},
}


def setup(threads: int):
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(min(2, threads))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT / "scripts"))


def demo_config():
    import yaml

    return {
        "tiling": {"patch_size_px": 64},
        "model": yaml.safe_load((ROOT / "config/config.yaml").read_text())["model"],
    }


def build(variant: str, res: int, batch: int = 16):
    import tensorflow as tf

    from proganomaly.config import Config, validate_config
    from proganomaly.model import losses as LS
    from proganomaly.model.architectures import build_networks
    from proganomaly.model.networks import Phase
    from proganomaly.training.forward import PURPOSES, Forward, step_seeds
    from proganomaly.training.optim import Adam
    from proganomaly.training.steps import make_train_step

    cfg = Config.from_dict(
        validate_config(demo_config() if variant.startswith("demo") else json.loads(json.dumps(ANCHOR)))
    )
    nets = build_networks(cfg.model, 64, seed=1)
    o = cfg.training.optimizers
    opts = {
        "generator": Adam(nets.generator_variables, o.generator, "g"),
        "discriminator": Adam(nets.critic.trainable_variables, o.discriminator, "d"),
        "encoder": None,
    }
    phase = Phase({4: 0, 8: 2, 16: 4, 32: 6, 64: 8}[res])
    if variant in ("fused", "demo", "demo-xla", "demo-bf16"):
        dtype = tf.bfloat16 if variant == "demo-bf16" else tf.float32
        step = make_train_step(
            nets, opts, phase, seed=1, global_batch=batch, compute_dtype=dtype, jit_compile=variant == "demo-xla"
        )

        def pair(x1, x2, i):
            return step(x1, i, tf.constant(1.0))["generator_total_loss"]

        return pair, step
    m = cfg.model
    w = m.architecture_loss_weights

    def all_losses(images, i):
        x = tf.cast(images, tf.float32) / 127.5 - 1
        seeds = step_seeds(1, i)
        fwd = Forward(nets, phase, 1.0, x, seeds, tf.float32)
        fake = fwd["G_of_x"]

        def critic(img):
            return nets.critic(img, phase.block, phase.transition, 1.0)[0]

        u = tf.random.stateless_uniform((batch,), seeds[PURPOSES["gp_mix"]])
        d = LS.critic_losses(critic, x, {"D_of_G_of_x": fake}, w.discriminator, u, global_batch=batch,
                             gp_coefficient=m.gradient_penalty_coefficient, gp_target=m.gradient_penalty_target,
                             epsilon_drift=m.epsilon_drift)  # fmt: skip
        terms = LS.distance_terms(fwd, [("x_minus_G_of_x", "l2")], nets.terms, global_batch=batch, normalize=True)
        g = LS.network_total(terms, {"D_of_G_of_x": d["D(G(x))"]}, w.generator, 0.0)
        return d["discriminator_total_loss"], g

    @tf.function
    def d_step(images, i):
        with tf.GradientTape() as tape:
            d_loss, _ = all_losses(images, i)
        v = nets.critic.trainable_variables
        opts["discriminator"].apply(tape.gradient(d_loss, v), v)
        return d_loss

    @tf.function
    def g_step(images, i):
        with tf.GradientTape() as tape:
            _, g_loss = all_losses(images, i)
        v = nets.generator_variables
        opts["generator"].apply(tape.gradient(g_loss, v), v)
        return g_loss

    def pair(x1, x2, i):
        d_step(x1, i)
        return g_step(x2, i + 1)

    return pair, None


def flops_per_image(step, x, batch: int):
    """FLOPs of one fused step per image, from TensorFlow's per-op statistics (convolutions, matmuls, element-wise).

    Only ops that can affect an output or a variable update are counted. A traced tape emits both halves of every
    convolution's gradient (input and filter) even where one is never used, e.g. the critic's filter gradients inside
    the generator's and the gradient penalty's tapes; grappler prunes them before running, so TensorFlow's profiler,
    which counts every op of the traced graph, overstated the work by about 9 %.
    """
    import tensorflow as tf
    from tensorflow.python.framework import ops as tf_ops

    graph = step.get_concrete_function(x, tf.constant(0, tf.int64), tf.constant(1.0)).graph
    live, todo = set(), [t.op for t in graph.outputs if t is not None]
    todo += [op for op in graph.get_operations() if op._is_stateful]  # variable updates, stateful RNG
    while todo:
        op = todo.pop()
        if op.name in live:
            continue
        live.add(op.name)
        todo.extend(t.op for t in op.inputs)
        todo.extend(op.control_inputs)
    total = 0
    for op in graph.get_operations():
        if op.name not in live:
            continue
        try:
            stat = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops")
        except (ValueError, TypeError):  # shape not static (none of the heavy ops): not counted
            continue
        total += stat.value or 0
    return total / batch


def worker(variant: str, res: int, steps: int, batch: int = 16) -> dict:
    import numpy as np
    import tensorflow as tf

    pair, step = build(variant, res, batch)
    rng = np.random.default_rng(0)
    x1 = tf.constant(rng.integers(0, 256, (batch, res, res, 3)), tf.uint8)
    x2 = tf.constant(rng.integers(0, 256, (batch, res, res, 3)), tf.uint8)
    t = time.perf_counter()
    pair(x1, x2, tf.constant(0, tf.int64)).numpy()
    first = time.perf_counter() - t
    times = []
    for i in range(steps):
        t = time.perf_counter()
        pair(x1, x2, tf.constant(2 * i + 2, tf.int64)).numpy()
        times.append(time.perf_counter() - t)
    warm = sorted(times[2:])
    sec = warm[len(warm) // 2]
    out = {"variant": variant, "res": res, "s_per_pair": sec, "images_per_s": batch / sec, "first_call_s": first,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip
    if step is not None and variant == "fused":
        out["flops_per_image"] = flops_per_image(step, x1, batch)
    return out


def peak_flops(n: int = 2048, reps: int = 30) -> float:
    """Best float32 matmul rate over many repetitions: on a shared machine a few calls rarely catch both cores free,
    and five of them read about half the attainable rate (so that %peak exceeded 100)."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    mm = tf.function(lambda a: tf.matmul(a, a))
    mm(a).numpy()
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        mm(a).numpy()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--resolutions", default="16,32,64")
    ap.add_argument("--worker", nargs=2, metavar=("VARIANT", "RES"))
    ap.add_argument("--xla", action="store_true", help="demo model, XLA off vs on")
    ap.add_argument("--precision", action="store_true", help="demo model, float32 vs bfloat16")
    args = ap.parse_args()
    setup(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.steps)))
        return
    if args.xla or args.precision:
        compare(args, ("demo", "demo-xla") if args.xla else ("demo", "demo-bf16"))
        return
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    rows = []
    for res in map(int, args.resolutions.split(",")):
        for variant in ("fused", "original"):
            cmd = [sys.executable, __file__, "--worker", variant, str(res), "--steps", str(args.steps),
                   "--threads", str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
    peak = json.loads(subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
         "import bench_training as b; b.setup(%d); import json; print(json.dumps(b.peak_flops()))" % args.threads],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])  # fmt: skip
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    print(f"threads {args.threads}; load average before {' '.join(load0)}, after {' '.join(load1)}")
    print(f"measured peak float32 matmul: {peak / 1e9:.1f} GFLOP/s")
    hdr = f"{'res':>4} {'variant':>9} {'s/pair':>8} {'img/s':>7} {'vs orig.':>8} {'vs ours-orig':>12} {'RSS MB':>7} {'GFLOP/img':>9} {'%peak':>6}"
    print(hdr)
    by = {(r["variant"], r["res"]): r for r in rows}
    for r in rows:
        ref = ORIGINAL_S[r["res"]] / r["s_per_pair"] if r["res"] in ORIGINAL_S else float("nan")
        same = by[("original", r["res"])]["s_per_pair"] / r["s_per_pair"]
        fl = r.get("flops_per_image", float("nan"))
        pct = 100 * fl * r["images_per_s"] / peak if fl == fl else float("nan")
        print(f"{r['res']:>4} {r['variant']:>9} {r['s_per_pair']:>8.3f} {r['images_per_s']:>7.1f} {ref:>7.2f}x "
              f"{same:>11.2f}x {r['peak_rss_mb']:>7.0f} {fl / 1e9:>9.3f} {pct:>6.1f}")  # fmt: skip
    print(
        "vs orig.: the original's published s/pair on this machine type divided by ours; vs ours-orig: speed-up "
        "over the original-style step measured in the same run. FLOPs: TF op statistics of the ops the fused step "
        "really runs (dead gradient halves excluded); %peak against the best of 30 float32 2048² matmuls."
    )


def compare(args, variants: tuple[str, str]) -> None:
    """s per step of two demo-model variants, per resolution, each in a fresh process; the ratio is first/second."""
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    print(f"{'res':>4} {'variant':>9} {'s/step':>8} {'img/s':>7} {'first call s':>12} {'RSS MB':>7} {'speed-up':>8}")
    for res in map(int, args.resolutions.split(",")):
        base = None
        for variant in variants:
            cmd = [sys.executable, __file__, "--worker", variant, str(res), "--steps", str(args.steps),
                   "--threads", str(args.threads)]  # fmt: skip
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            base = base or r["s_per_pair"]
            print(f"{res:>4} {variant:>9} {r['s_per_pair']:>8.3f} {r['images_per_s']:>7.1f} {r['first_call_s']:>12.1f}"
                  f" {r['peak_rss_mb']:>7.0f} {base / r['s_per_pair']:>7.2f}x", flush=True)  # fmt: skip
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    print(f"threads {args.threads}; load average before {' '.join(load0)}, after {' '.join(load1)}")


if __name__ == "__main__":
    main()
