"""Network shapes at every growth phase, fade-in endpoints, the channel plan, and config checks."""

import copy
import json

import numpy as np
import pytest
import tensorflow as tf

from proganomaly.config import Config, validate_config
from proganomaly.model import io as model_io
from proganomaly.model import layers as L
from proganomaly.model.architectures import ARCHITECTURES, architecture, build_networks
from proganomaly.model.networks import Phase, num_blocks, phases
from proganomaly.training.optim import build_optimizers
from proganomaly.training.steps import STEP_KEYS, loss_fields, make_replica_step


def tiny(patch=16, **model):
    raw = {
        "tiling": {"patch_size_px": patch},
        "model": {"filters": [[8, 6], [6, 5], [5, 4], [4, 4]], "latent_size": 12},
    }
    raw["model"].update(model)
    return Config.from_dict(validate_config(copy.deepcopy(raw)))


def test_phase_indexing_follows_the_original():
    got = [(p.block, p.transition, p.resolution) for p in phases(3)]
    assert got == [(0, False, 4), (1, True, 8), (1, False, 8), (2, True, 16), (2, False, 16)]
    assert Phase(16).block == 8 and Phase(16).resolution == 1024 and len(phases(9)) == 17
    assert num_blocks(64) == 5 and num_blocks(4) == 1
    with pytest.raises(ValueError, match="power of two"):
        num_blocks(48)


@pytest.mark.parametrize("arch", ["ganomaly", "berg"])
def test_shapes_at_every_phase(arch):
    cfg = tiny(32, architecture=arch, create_encoder=True)
    nets = build_networks(cfg.model, 32, seed=1)
    for ph in phases(nets.blocks):
        r = ph.resolution
        x = tf.random.uniform((4, r, r, 3), -1, 1)
        if arch == "ganomaly":
            z, y = nets.generate(x, ph.block, ph.transition, 0.3)
            _, skips = nets.ge(x, ph.block, ph.transition, 0.3)
            assert [s.shape[1] for s in skips] == [4 * 2**b for b in range(ph.block + 1)]
        else:
            z, y = nets.generate(tf.random.normal((4, 12)), ph.block, ph.transition, 0.3)
        assert z.shape == (4, 12) and y.shape == (4, r, r, 3)
        assert nets.encoder(y, ph.block, ph.transition, 0.3)[0].shape == (4, 12)
        assert nets.critic(y, ph.block, ph.transition, 0.3)[0].shape == (4, 1)


def test_channel_plan_and_true_valid_base_conv():
    cfg = tiny(16)
    nets = build_networks(cfg.model, 16, seed=1)
    f = cfg.model.filters
    base = nets.critic.convs[0]
    assert base[0].kernel.shape == (3, 3, f[0][1] + 1, f[0][0])  # +1: minibatch stddev channel (critic only)
    assert nets.ge.convs[0][0].kernel.shape == (3, 3, f[0][1], f[0][0])
    assert base[1].kernel.shape == (4, 4, f[0][0], f[0][0]) and base[1].padding == "VALID"
    assert nets.critic.logits.kernel.shape == (f[0][0], 1)
    # U-Net: the decoder's block-b input is its own features plus Ge's pre-pool activation at that resolution
    assert nets.decoder.convs[0][0].kernel.shape == (4, 4, 2 * f[0][0], f[0][0])
    assert nets.decoder.convs[2][0].kernel.shape == (3, 3, 2 * f[1][1], f[2][0])
    no_skip = build_networks(tiny(16, unet_skips=[True, False, True]).model, 16, seed=1)
    assert no_skip.decoder.convs[1][0].kernel.shape == (3, 3, f[0][1], f[1][0])


def test_fade_in_at_alpha_0_and_1_equals_old_and_new_paths():
    nets = build_networks(tiny(16).model, 16, seed=3)
    x = tf.random.uniform((4, 16, 16, 3), -1, 1, seed=1)
    x8 = L.downsample2x(x)
    # generator (Ge + Gd with skips): α = 1 is the stable block-2 model, α = 0 the block-1 model on the pooled input
    np.testing.assert_allclose(nets.generate(x, 2, True, 1.0)[1], nets.generate(x, 2, False)[1], atol=1e-5)
    np.testing.assert_allclose(
        nets.generate(x, 2, True, 0.0)[1], L.upsample2x(nets.generate(x8, 1, False)[1]), atol=1e-5
    )
    # critic
    np.testing.assert_allclose(nets.critic(x, 2, True, 1.0)[0], nets.critic(x, 2, False)[0], atol=1e-5)
    np.testing.assert_allclose(nets.critic(x, 2, True, 0.0)[0], nets.critic(x8, 1, False)[0], atol=1e-5)
    mid = nets.generate(x, 2, True, 0.5)[1]
    assert not np.allclose(mid, nets.generate(x, 2, False)[1], atol=1e-4)


def test_berg_decoder_fade_in():
    cfg = tiny(16, architecture="berg", create_encoder=True)
    nets = build_networks(cfg.model, 16, seed=3)
    z = tf.random.normal((3, 12), seed=2)
    np.testing.assert_allclose(nets.decoder(z, 2, True, 1.0), nets.decoder(z, 2, False), atol=1e-5)
    np.testing.assert_allclose(nets.decoder(z, 2, True, 0.0), L.upsample2x(nets.decoder(z, 1, False)), atol=1e-5)


def test_weights_are_a_function_of_the_seed():
    a, b, c = (build_networks(tiny(8).model, 8, seed=s) for s in (5, 5, 6))
    for va, vb in zip(a.generator_variables, b.generator_variables, strict=True):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    assert not np.array_equal(a.decoder.projection.kernel.numpy(), c.decoder.projection.kernel.numpy())
    # every layer gets its own stream
    assert not np.array_equal(a.critic.from_rgb[0].kernel.numpy()[0, 0, :3], a.ge.from_rgb[0].kernel.numpy()[0, 0, :3])


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="create_encoder"):
        build_networks(tiny(8, architecture="berg").model, 8, seed=0)
    with pytest.raises(ValueError, match=r"model.filters has 4 entries; 5 blocks"):
        build_networks(tiny(8).model, 64, seed=0)


def test_paper_sized_plan_builds_lazily_enough():
    """The default (paper) lists build the 1024 px model's variables with the original's shapes."""
    cfg = Config.from_dict(validate_config({"tiling": {"patch_size_px": 1024}}))
    assert num_blocks(1024) == 9 and len(cfg.model.filters) == 9
    assert cfg.model.filters[4] == [256, 256] and cfg.model.kernel_sizes[0] == [4, 3]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_meets_the_contract(name, tmp_path):
    """What training, calibration, export and inference use, for every registered architecture alike."""
    cfg = tiny(16, architecture=name, create_encoder=True)
    nets = build_networks(cfg.model, 16, seed=1)
    assert nets.name == name and isinstance(nets, architecture(name))
    x = tf.random.uniform((3, 16, 16, 3), -1, 1, seed=1)
    block = nets.blocks - 1
    assert nets.reconstruct(x, block).shape == (3, 16, 16, 3)
    assert nets.encode(x, block).shape == (3, 12)
    extras = nets.served_extras(x, block)
    assert tuple(extras) == nets.extra_outputs and all(v.shape == (3,) for v in extras.values())
    assert set(nets.terms.values()) and set(nets.fakes.values()) <= set(nets.recipes) | {"x"}
    # every tensor a loss term names can be made from x by the recipes
    names = {n for pair in nets.terms.values() for n in pair} | set(nets.fakes.values())
    assert names <= set(nets.recipes) | {"x"}
    assert set(nets.inference_modules()) <= set(nets.modules()) and "critic" not in nets.inference_modules()
    # the saved weights rebuild the inference view exactly
    model_io.save_weights(nets, tmp_path / model_io.WEIGHTS)
    (tmp_path / model_io.MODEL_JSON).write_text(json.dumps(model_io.model_record(cfg.model, 16, 1)))
    loaded = model_io.load_trained(tmp_path)
    assert loaded.architecture == name and loaded.extra_outputs == nets.extra_outputs
    np.testing.assert_array_equal(loaded.reconstruct(x).numpy(), nets.reconstruct(x, block).numpy())
    for k, v in loaded.served_extras(x).items():
        np.testing.assert_array_equal(v.numpy(), extras[k].numpy())


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_trains_a_step_with_its_logged_fields(name):
    weights = {"berg": {"encoder": {"x_minus_G_of_E_of_x_l1": 1.0}}} if name == "berg" else {}
    cfg = tiny(8, architecture=name, create_encoder=name == "berg", loss_weights=weights)
    nets = build_networks(cfg.model, 8, seed=1)
    opts = build_optimizers(nets, cfg.training.optimizers)
    step = make_replica_step(nets, opts, Phase(2), seed=0, global_batch=4)
    images = tf.cast(tf.random.stateless_uniform((4, 8, 8, 3), (1, 2), 0, 255, tf.int32), tf.uint8)
    out = step(images, tf.constant(0, tf.int64), tf.constant(1.0))
    fields = loss_fields(nets, opts["encoder"] is not None)
    assert set(out) <= set(fields) and all(np.isfinite(float(v)) for v in out.values())
    assert [f for f in fields if f not in STEP_KEYS and f not in out] == []


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_patch_encodes_and_reconstructs_the_same_alone_and_in_any_batch(name):
    """No minibatch stddev in Ge / E (issue 12): inference depends on the patch alone; the critic, which keeps it
    for training, does too once its stddev channel is given a fixed value."""
    nets = build_networks(tiny(16, architecture=name, create_encoder=True).model, 16, seed=2)
    block = nets.blocks - 1
    x = tf.random.stateless_uniform((6, 16, 16, 3), (4, 5), -1, 1)
    assert not nets.image_encoder().stddev and not nets.encoder.stddev and nets.critic.stddev
    whole = nets.reconstruct(x, block).numpy(), nets.encode(x, block).numpy()
    crit = nets.critic(x, block, False, stddev_value=0.3)[0].numpy()
    for sl in (slice(2, 3), slice(1, 4), slice(0, 5)):
        np.testing.assert_allclose(nets.reconstruct(x[sl], block).numpy(), whole[0][sl], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(nets.encode(x[sl], block).numpy(), whole[1][sl], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            nets.critic(x[sl], block, False, stddev_value=0.3)[0].numpy(), crit[sl], rtol=1e-5, atol=1e-5
        )
    # what the fixed value replaces: with the batch statistic the critic's output moves with the batch
    assert not np.allclose(nets.critic(x[2:3], block, False)[0].numpy(), nets.critic(x, block, False)[0].numpy()[2:3])


def test_weights_file_carries_the_critic_and_older_files_still_load(tmp_path):
    import h5py

    cfg = tiny(16, architecture="ganomaly")
    nets = build_networks(cfg.model, 16, seed=1)
    model_io.save_weights(nets, tmp_path / model_io.WEIGHTS)
    (tmp_path / model_io.MODEL_JSON).write_text(json.dumps(model_io.model_record(cfg.model, 16, 1)))
    loaded = model_io.load_trained(tmp_path)
    assert loaded.has_critic
    for k, v in model_io.critic_variables(loaded.nets).items():
        np.testing.assert_array_equal(v.numpy(), model_io.critic_variables(nets)[k].numpy())
    with h5py.File(tmp_path / model_io.WEIGHTS, "a") as fh:  # a file written before the critic was saved
        del fh["critic"]
    assert not model_io.load_trained(tmp_path).has_critic
    record = model_io.model_record(cfg.model, 16, 1)
    record["model"]["minibatch_stddev"]["encoders"] = False  # model.json of an older version, option off
    (tmp_path / model_io.MODEL_JSON).write_text(json.dumps(record))
    model_io.load_trained(tmp_path)
    record["model"]["minibatch_stddev"]["encoders"] = True
    (tmp_path / model_io.MODEL_JSON).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"minibatch stddev in its encoders.*retrain"):
        model_io.load_trained(tmp_path)
