"""Training at cohort scale (issue 13): batches mixed across all slides under a byte budget, streamed held-out error
after the phase-end checkpoint, wall-clock checkpoints, float16/bfloat16, several devices, replica checks."""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from fresh_python import run_fresh_python
from proganomaly.config import Config, ConfigError, check_cross_keys, validate_config
from proganomaly.data.records import buffer_examples, build_manifest, make_dataset, write_records
from proganomaly.training.heldout import HeldoutEvaluator
from test_training import HELDOUT, down, heldout_fn, run, tiny_spec


def _slides(tmp_path, n_slides=6, per_slide=24, size=4):
    rng = np.random.default_rng(0)
    manifests = []
    for i in range(n_slides):
        sid, out = f"slide{i}", tmp_path / f"slide{i}"
        patches = [(x, 0, size, size, rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for x in range(per_slide)]
        res = write_records(patches, sid, out, [size], shard_max_examples=per_slide)
        path = tmp_path / f"{sid}.manifest.json"
        path.write_text(json.dumps(build_manifest(sid, out, res, size)))
        manifests.append(path)
    return manifests


def test_every_batch_mixes_all_train_slides_within_the_byte_budget(tmp_path):
    """6 slides, one shard each, batches of 8: with a one-example buffer (a budget below one record) every batch holds
    all 6 slides (the shards are read in turn); with a 6-example budget every batch holds at least 4 and every three
    consecutive batches all 6. The old interleave over 4 shards at a time saw at most 4 slides per stretch."""
    manifests = _slides(tmp_path)
    per_example = sum(p.stat().st_size for p in tmp_path.glob("slide*/*.tfrecord")) / (6 * 24)
    assert buffer_examples(manifests, 4, 6 * per_example / 2**20) == 6  # the buffer length follows the budget
    assert buffer_examples(manifests, 4, 1e-9) == 1

    def slides_per_batch(budget_mb):
        ds = make_dataset(manifests, 4, batch_size=8, shuffle=True, seed=5, repeat=True, drop_remainder=True,
                          with_meta=True, shuffle_buffer=buffer_examples(manifests, 4, budget_mb))  # fmt: skip
        return [set(b["slide_id"].tolist()) for b in ds.take(40).as_numpy_iterator()]  # over two epochs

    assert all(len(b) == 6 for b in slides_per_batch(1e-9))
    batches = slides_per_batch(6 * per_example / 2**20)
    assert min(len(b) for b in batches) >= 4
    assert all(len(a | b | c) == 6 for a, b, c in zip(batches, batches[1:], batches[2:], strict=False))


def test_heldout_error_is_streamed_in_configurable_chunks_and_equals_the_exact_means():
    from proganomaly.model.architectures import build_networks
    from test_training import tiny_spec as spec_fn

    spec = spec_fn()
    nets = build_networks(spec.model, 8, spec.seed)

    class Rows(list):
        write = list.append

    rows = {}
    for chunk in (5, 32):
        rows[chunk] = Rows()
        x = HeldoutEvaluator(nets, heldout_fn, 8, rows[chunk], batch_size=chunk, keep=4).evaluate(0, "p", 0,
                                                                                                  {"global_step": 0, "images_seen": 0})  # fmt: skip
        np.testing.assert_array_equal(x, down(HELDOUT, 4)[:4])
    a, b = rows[5][0], rows[32][0]
    assert a["examples"] == 16
    # the exact values: numpy over all patches at once
    x4, full = down(HELDOUT, 4).astype(np.float32) / 127.5 - 1, HELDOUT.astype(np.float32) / 127.5 - 1
    rec = tf.cast(nets.reconstruct(tf.constant(x4), 0), tf.float32).numpy()
    up = np.repeat(np.repeat(rec, 2, 1), 2, 2)
    assert a["l1"] == pytest.approx(np.abs(rec - x4).mean(), rel=1e-5)
    assert a["l2_full"] == pytest.approx(np.square(up - full).mean(), rel=1e-5)
    for k in ("l1", "l2", "l1_full", "l2_full", "l1_full_floor", "l2_full_floor"):
        assert a[k] == pytest.approx(b[k], rel=1e-6)


def test_a_crash_in_the_phase_end_evaluation_does_not_repeat_the_phase(tmp_path, monkeypatch):
    spec = tiny_spec(phase_images=[80, 80])
    original, calls = HeldoutEvaluator.evaluate, []

    def crash_once(self, block, name, index, state):
        calls.append(index)
        if index == 1 and calls.count(1) == 1:
            raise RuntimeError("simulated crash after the checkpoint")
        return original(self, block, name, index, state)

    monkeypatch.setattr(HeldoutEvaluator, "evaluate", crash_once)
    with pytest.raises(RuntimeError, match="simulated"):
        run(tmp_path, spec)
    _, summary = run(tmp_path, spec)
    assert summary["resumed_from"]["phase_index"] == 2 and summary["resumed_from"]["phase_iteration"] == 0
    assert summary["phases"][1].get("iterations_this_run") is None  # phase 1 was not trained again
    assert [h["phase_index"] for h in summary["heldout"]] == [-1, 0, 1, 2]
    assert (tmp_path / "samples/phase01_8px-fade.png").exists()


def test_checkpoints_follow_the_wall_clock_and_phase_ends_and_a_bounded_number_is_kept(tmp_path, monkeypatch):
    from proganomaly.training.checkpoint import CheckpointStore

    saved = []
    original = CheckpointStore.save
    monkeypatch.setattr(
        CheckpointStore, "save", lambda self, step, **kw: (saved.append(step), original(self, step, **kw))[1]
    )
    run(tmp_path / "phase_ends", tiny_spec(phase_images=[80, 80], checkpoint_every_images=None,
                                            checkpoint_every_minutes=1e6))  # fmt: skip
    assert saved == [0, 10, 20, 30]  # the initial state and every phase end
    saved.clear()
    run(tmp_path / "clock", tiny_spec(phase_images=[80, 80], checkpoint_every_images=None,
                                       checkpoint_every_minutes=1e-6, keep_checkpoints=3))  # fmt: skip
    assert saved == list(range(31))  # due after every step
    names = {p.name.split(".")[0] for p in (tmp_path / "clock/checkpoints").glob("ckpt-*")}
    assert names == {"ckpt-000000028", "ckpt-000000029", "ckpt-000000030"}
    # the log does not depend on when the clock asked for a save
    a, b = (pd.read_csv(tmp_path / d / "loss_log.csv").drop(columns=["images_per_s"]) for d in ("phase_ends", "clock"))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(("precision", "tolerance"), [("bfloat16", 0.05), ("float16", 0.05)])
def test_reduced_precision_trains_finite_and_agrees_with_float32(tmp_path, precision, tolerance):
    """Same seed and data; the losses logged after 4 steps agree within `tolerance` of the largest of them (float16 may skip
    early updates while its loss scale settles) and the final held-out L1 within 15 %."""
    spec32, spec = tiny_spec(phase_images=[160, 160]), tiny_spec(phase_images=[160, 160], precision=precision)
    run(tmp_path / "f32", spec32)
    trainer, summary = run(tmp_path / precision, spec)
    a, b = (pd.read_csv(tmp_path / d / "loss_log.csv") for d in ("f32", precision))
    cols = ["generator_total_loss", "discriminator_total_loss", "x_minus_G_of_x_l2"]
    assert np.isfinite(b[cols].to_numpy()).all()
    first = a[cols].iloc[0].to_numpy(), b[cols].iloc[0].to_numpy()
    np.testing.assert_allclose(first[1], first[0], atol=tolerance * np.abs(first[0]).max())
    held32 = pd.read_csv(tmp_path / "f32/heldout_error.csv")["l1_full"].iloc[-1]
    assert summary["heldout"][-1]["l1_full"] == pytest.approx(held32, rel=0.15)
    if precision == "float16":
        assert float(trainer.loss_scale.scale.numpy()) >= 1.0


def test_two_devices_give_the_weights_of_one():
    """MirroredStrategy over 2 logical CPUs vs one device, with step randomness off (each replica draws its own
    masks, noise and penalty mixes): weights agree within 1e-4 after 30 steps of batch 8 (4 per replica), kernel
    regularisers on (counted once, not per replica)."""
    run_fresh_python(
        """
        import sys, tempfile
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from proganomaly.config import Config, validate_config
        from proganomaly.training.loop import Trainer
        from proganomaly.training.spec import RunSpec, enable_determinism
        enable_determinism(3)
        raw = {
            "tiling": {"patch_size_px": 8},
            "model": {"filters": [[16, 16], [12, 12]], "latent_size": 16, "mask": {"percent": 0},
                      "z_noise": {"distribution": "none"}, "fake_noise": {"distribution": "none"},
                      "gradient_penalty_coefficient": 0, "minibatch_stddev": {"discriminator": False},
                      "loss_weights": {"ganomaly": {"generator": {"kernel_l2": 0.01}, "discriminator": {"kernel_l2": 0.01}}}},
            "training": {"batch_sizes": [8, 8], "phase_images": [80, 80], "heldout_examples": 0},
            "resources": {"gpus": {"training": 2}},
        }
        cfg = Config.from_dict(validate_config(raw))
        rng = np.random.default_rng(1)
        data = rng.integers(0, 255, (64, 8, 8, 3), dtype=np.uint8)
        def dataset_fn(res, bs, seed):
            f = 8 // res
            x = data.reshape(64, res, f, res, f, 3).mean((2, 4)).round().astype(np.uint8)
            return tf.data.Dataset.from_tensor_slices(x).shuffle(64, seed=seed).repeat().batch(bs, drop_remainder=True)
        weights = []
        for strategy in (None, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
            spec = RunSpec(cfg.model, cfg.training, 3, 8, replicas=1 if strategy is None else 2)
            t = Trainer(spec, tempfile.mkdtemp(), dataset_fn, strategy=strategy)
            t.run()
            weights.append([v.numpy() for v in t.nets.generator_variables + list(t.nets.critic.trainable_variables)])
        worst = max(float(np.abs(a - b).max()) for a, b in zip(*weights))
        print("max abs weight difference", worst)
        assert worst < 1e-4, worst
        """,
        timeout=600,
    )


def test_batch_sizes_must_divide_by_the_gpu_count():
    def cfg(**training_gpus):
        raw = {"training": {"batch_sizes": training_gpus.pop("batch")}, "resources": {"gpus": training_gpus}}
        return Config.from_dict(validate_config(raw))

    check_cross_keys(cfg(batch=[32, 16, 16, 16, 2], training=2))
    with pytest.raises(ConfigError, match=r"training.batch_sizes\[4\]=1 does not divide by resources.gpus.training=2"):
        check_cross_keys(cfg(batch=[32, 16, 16, 16, 1], training=2))
    with pytest.raises(ConfigError, match=r"gives 6 per GPU .* not a multiple of model.minibatch_stddev.group_size=4"):
        check_cross_keys(cfg(batch=[12, 16, 16, 16, 2], training=2))
