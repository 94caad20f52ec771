"""The training loop: schedule, learning, determinism, kill-and-resume equality, NaN rollback, logs and outputs."""

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from proganomaly.config import Config, validate_config
from proganomaly.model import io as model_io
from proganomaly.training.checkpoint import CheckpointStore
from proganomaly.training.loop import NonFiniteLoss, Trainer
from proganomaly.training.schedule import plan
from proganomaly.training.spec import RunSpec, fingerprint
from proganomaly.training.steps import to_float

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "tiling": {"patch_size_px": 8},
    "model": {"filters": [[16, 16], [12, 12]], "latent_size": 16},
    "training": {
        "batch_sizes": [8, 8],
        "phase_images": [320, 320],
        "checkpoint_every_images": 40,
        "log_every_steps": 4,
        "heldout_examples": 16,
        "sample_images": 4,
    },
}


def tiny_spec(seed=3, **training):
    raw = copy.deepcopy(TINY)
    raw["training"].update(training)
    cfg = Config.from_dict(validate_config(raw))
    return RunSpec(cfg.model, cfg.training, seed, 8)


def images(n, size=8, seed=0):
    """Smooth, learnable patches: a random colour plus a random horizontal and vertical gradient (uint8)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(-1, 1, size)
    base = rng.uniform(-0.6, 0.6, (n, 1, 1, 3))
    gx, gy = rng.uniform(-0.3, 0.3, (n, 1, 1, 3)), rng.uniform(-0.3, 0.3, (n, 1, 1, 3))
    x = base + gx * t[None, None, :, None] + gy * t[None, :, None, None]
    return np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)


def down(a, r):
    f = a.shape[1] // r
    return a.reshape(len(a), r, f, r, f, 3).mean((2, 4)).round().astype(np.uint8)


TRAIN, HELDOUT = images(256, seed=1), images(16, seed=2)


def dataset_fn(res, bs, seed):
    ds = tf.data.Dataset.from_tensor_slices(down(TRAIN, res)).shuffle(256, seed=seed)
    return ds.repeat().batch(bs, drop_remainder=True)


def heldout_fn(res):
    return tf.data.Dataset.from_tensor_slices(down(HELDOUT, res))


def run(tmp, spec=None, **kw):
    trainer = Trainer(spec or tiny_spec(), tmp, kw.pop("dataset_fn", dataset_fn), heldout_fn, **kw)
    return trainer, trainer.run()


def h5(path):
    import h5py

    out = {}
    with h5py.File(path) as fh:
        fh.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def assert_same_weights(a, b):
    wa, wb = h5(a), h5(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_schedule_in_images_with_alpha_restarting_per_fade_in():
    cfg = Config.from_dict(validate_config({"training": {"batch_sizes": [4, 3, 2], "phase_images": [10, 9, 1]}}))
    plans = plan(cfg.training, 3)
    assert [(p.phase.resolution, p.batch_size, p.iterations, p.images) for p in plans] == [
        (4, 4, 2, 8), (8, 3, 3, 9), (8, 3, 3, 9), (16, 2, 1, 2), (16, 2, 1, 2),
    ]  # fmt: skip
    assert [plans[1].alpha(i) for i in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert plans[3].alpha(0) == 1.0 and plans[2].alpha(0) == 1.0
    with pytest.raises(ValueError, match=r"training\.batch_sizes has 3 entries; 4 blocks"):
        plan(cfg.training, 4)


def test_short_run_learns_and_writes_every_output(tmp_path):
    trainer, summary = run(tmp_path)
    held = summary["heldout"]
    assert [h["phase"] for h in held] == ["initial", "4px-stable", "8px-fade", "8px-stable"]
    assert held[-1]["l1_full"] < 0.5 * held[0]["l1_full"]  # held-out error falls clearly
    assert held[-1]["l2_full"] < held[0]["l2_full"] / 4
    # updates counted honestly: one critic and one generator update per batch, phases as long as configured
    assert summary["global_steps"] == 3 * 40 == summary["critic_updates"] == summary["generator_updates"]
    assert [p["images"] for p in summary["phases"]] == [320, 320, 320]
    log = pd.read_csv(tmp_path / "loss_log.csv")
    assert log["global_step"].is_monotonic_increasing and log["global_step"].is_unique
    numeric = log.drop(columns=["phase"]).dropna(axis=1, how="all")
    assert all(pd.api.types.is_numeric_dtype(t) for t in numeric.dtypes)
    fade = log[log.phase == "8px-fade"]
    assert fade["alpha"].iloc[0] < 0.2 and fade["alpha"].iloc[-1] == 1.0 and fade["alpha"].is_monotonic_increasing
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "phase00_4px-stable.png", "phase01_8px-fade.png", "phase02_8px-stable.png",
    ]  # fmt: skip
    # the saved generator reproduces the trained one in inference mode
    loaded = model_io.load_trained(tmp_path)
    assert loaded.architecture == "ganomaly" and loaded.patch_size_px == 8
    x = tf.constant(HELDOUT, tf.float32) / 127.5 - 1
    np.testing.assert_allclose(loaded.reconstruct(x), trainer.nets.generate(x, 1, False)[1], atol=1e-6)
    assert loaded.encode(x).shape == (16, 16)
    err = float(tf.reduce_mean(tf.abs(loaded.reconstruct(x) - x)))
    assert err == pytest.approx(held[-1]["l1"], rel=1e-4)
    # rerunning a finished run resumes at the end: no training, same weights
    before = h5(tmp_path / "generator.weights.h5")
    _, again = run(tmp_path)
    assert again["resumed_from"]["phase_index"] == 3 and again["phases"][0].get("iterations_this_run") is None
    after = h5(tmp_path / "generator.weights.h5")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def nan_dataset(after_calls, at_res=8):
    """Float batches; the 4th batch of a phase at `at_res` holds a NaN in the first `after_calls` datasets made."""
    calls = {"n": 0}

    def fn(res, bs, seed):
        ds = dataset_fn(res, bs, seed).map(lambda x: tf.cast(x, tf.float32) / 127.5 - 1)
        if res == at_res:
            calls["n"] += 1
            if calls["n"] <= after_calls:
                bad = tf.data.Dataset.range(10**9).map(lambda i: i == 3)
                ds = tf.data.Dataset.zip(ds, bad).map(lambda x, b: tf.where(b, x * np.nan, x))
        return ds

    return fn


def test_a_nan_rollback_is_reproducible_and_replays_with_new_numbers(tmp_path):
    """A NaN batch mid-phase rolls back once and the run finishes; the replay draws a new data order and new step
    seeds (so its weights differ from a clean run's), and the same seed reproduces the whole run, rollback included."""
    spec = tiny_spec(phase_images=[80, 80])
    run(tmp_path / "clean", spec, dataset_fn=nan_dataset(0))
    for name in ("nan", "nan_again"):
        _, summary = run(tmp_path / name, spec, dataset_fn=nan_dataset(1))
        assert summary["nan_rollbacks"] == 1
    assert_same_weights(tmp_path / "nan/generator.weights.h5", tmp_path / "nan_again/generator.weights.h5")
    clean, nan = h5(tmp_path / "clean/generator.weights.h5"), h5(tmp_path / "nan/generator.weights.h5")
    assert any(not np.array_equal(clean[k], nan[k]) for k in clean)
    log = pd.read_csv(tmp_path / "nan/loss_log.csv")
    assert log["global_step"].is_unique and np.isfinite(log["generator_total_loss"]).all()


def test_a_nan_from_the_step_is_left_behind_by_the_rollback(tmp_path, monkeypatch):
    """The step (not the data) makes the weights NaN at global step 30, but only with the seeds of the first attempt:
    the rollback's new step seeds move past it. Replaying the same seeds would meet it every time."""
    from proganomaly.training import steps

    original, attempts = steps.make_replica_step, []

    def poisoned(*args, seed, **kw):
        inner = original(*args, seed=seed, **kw)
        poison = seed == 3  # the run's seed: only the first attempt, before any rollback, uses it unchanged

        def step(images, global_step, alpha):
            if poison:
                bad = tf.equal(global_step, 30)
                images = tf.where(bad, tf.cast(images, tf.float32) * np.nan, to_float(images))
            return inner(images, global_step, alpha)

        attempts.append(seed)
        return step

    monkeypatch.setattr(steps, "make_replica_step", poisoned)
    _, summary = run(tmp_path, tiny_spec(phase_images=[320, 320], max_nan_rollbacks=1))
    assert summary["nan_rollbacks"] == 1 and summary["global_steps"] == 120
    assert len(set(attempts)) == 2  # the phases after the rollback ran with the new seed
    log = pd.read_csv(tmp_path / "loss_log.csv")
    assert (
        log["global_step"].is_unique
        and np.isfinite(log.drop(columns=["phase"]).dropna(axis=1, how="all").to_numpy(float)).all()
    )


def test_persistent_nan_fails_clearly(tmp_path):
    spec = tiny_spec(phase_images=[80, 80], max_nan_rollbacks=1)
    with pytest.raises(NonFiniteLoss, match=r"gave up after 1 rollbacks \(training.max_nan_rollbacks\)"):
        run(tmp_path, spec, dataset_fn=nan_dataset(99, at_res=4))


HELPER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {scripts!r})
    sys.path.insert(0, {tests!r})
    import tensorflow as tf
    import test_training as T
    from proganomaly.training.loop import Trainer
    from proganomaly.training.spec import enable_determinism

    enable_determinism(3)

    def slow(res, bs, seed):  # slow enough for the test to kill it mid-run
        return T.dataset_fn(res, bs, seed).map(lambda x: tf.py_function(lambda y: (time.sleep(0.02), y)[1], [x], tf.uint8))

    summary = Trainer(T.tiny_spec(), sys.argv[1], slow, T.heldout_fn).run()
    json.dump(summary, open(sys.argv[1] + "/summary.json", "w"))
    """
)


def train_process(helper, out):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, str(helper), str(out)], env=env, stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER.format(scripts=str(ROOT / "scripts"), tests=str(ROOT / "tests")))
    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir(), killed.mkdir()
    proc = train_process(helper, killed)
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["global_step"] >= 50:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read()
    step_at_kill = json.loads(latest.read_text())["global_step"]
    assert 50 <= step_at_kill < 120
    for out in (killed, full):
        p = train_process(helper, out)
        assert p.wait(timeout=600) == 0, p.stderr.read()
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["resumed_from"]["global_step"] == step_at_kill
    assert_same_weights(full / "generator.weights.h5", killed / "generator.weights.h5")
    a, b = (pd.read_csv(d / "loss_log.csv").drop(columns=["images_per_s"]) for d in (full, killed))
    pd.testing.assert_frame_equal(a, b)  # the log was cut back to the checkpoint and continued identically
    pd.testing.assert_frame_equal(pd.read_csv(full / "heldout_error.csv"), pd.read_csv(killed / "heldout_error.csv"))


def test_checkpoints_of_another_config_are_not_resumed(tmp_path):
    a, b = tiny_spec(phase_images=[40, 40]), tiny_spec(phase_images=[48, 48])
    assert fingerprint(a) != fingerprint(b) and fingerprint(a) != fingerprint(a, data="other manifests")
    assert fingerprint(a) == fingerprint(tiny_spec(phase_images=[40, 40], log_every_steps=99))  # bookkeeping only
    var = tf.Variable(1.0)
    CheckpointStore(tmp_path, tf.train.Checkpoint(v=var), fingerprint(a)).save(7)
    var.assign(5.0)
    assert CheckpointStore(tmp_path, tf.train.Checkpoint(v=var), fingerprint(a)).restore()["global_step"] == 7
    assert var.numpy() == 1.0
    assert CheckpointStore(tmp_path, tf.train.Checkpoint(v=var), fingerprint(b)).restore() is None
    assert not (tmp_path / "latest.json").exists()
