"""Loss primitives, the WGAN-GP critic loss against hand-computed cases, Adam, and every term toggled by its weight."""

import copy
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from proganomaly.config import AdamConfig, Config, validate_config
from proganomaly.model import losses as LS
from proganomaly.model.architectures import build_networks
from proganomaly.model.networks import Phase
from proganomaly.training.optim import Adam
from proganomaly.training.steps import make_replica_step


def tiny(**model):
    raw = {"tiling": {"patch_size_px": 8}, "model": {"filters": [[6, 6], [5, 5]], "latent_size": 6}}
    for key, value in model.items():
        raw["model"][key] = value
    return Config.from_dict(validate_config(copy.deepcopy(raw)))


def test_l1_l2_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4, 4, 3)), rng.normal(size=(3, 4, 4, 3))
    np.testing.assert_allclose(LS.l1(a, b).numpy(), np.abs(a - b).mean((1, 2, 3)) + 1e-8, rtol=1e-5)
    np.testing.assert_allclose(LS.l2(a, b).numpy(), ((a - b) ** 2).mean((1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(LS.l2(a, b, normalize=False).numpy(), ((a - b) ** 2).sum((1, 2, 3)), rtol=1e-5)
    za, zb = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    np.testing.assert_allclose(LS.l1(za, zb, normalize=False).numpy(), np.abs(za - zb).sum(1) + 1e-8, rtol=1e-5)


def test_gradient_penalty_hand_computed():
    # D(x) = Σ x²/2 per example → ∇ = x_mix, so the penalty is (‖x_mix‖ - t)²/t²
    real = np.full((2, 1, 1, 2), 1.0, np.float32)
    fake = np.array([[[[3.0, 1.0]]], [[[1.0, 5.0]]]], np.float32)
    u = np.array([0.5, 0.25], np.float32)
    mix = real + u[:, None, None, None] * (fake - real)  # [[2, 1]], [[1, 2]]

    def critic(x):
        return 0.5 * tf.reduce_sum(tf.square(x), axis=[1, 2, 3])[:, None]

    norm = np.sqrt((mix**2).sum((1, 2, 3)) + 1e-8)  # √5 each
    for t in (1.0, 2.0):
        got = LS.gradient_penalty(critic, tf.constant(real), tf.constant(fake), tf.constant(u), t).numpy()
        np.testing.assert_allclose(got, (norm - t) ** 2 / t**2, rtol=1e-5)


def linear_critic(w):
    return lambda x: tf.reduce_sum(x * w, axis=[1, 2, 3])[:, None]


def test_critic_loss_composition_and_global_batch_scaling():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(4, 2, 2, 3)).astype(np.float32), rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
    w = rng.normal(size=(1, 2, 2, 3)).astype(np.float32)
    weights = tiny().model.loss_weights.ganomaly.discriminator
    u = np.full(4, 0.3, np.float32)
    kw = {"gp_coefficient": 10.0, "gp_target": 1.0, "epsilon_drift": 0.001}
    full = LS.critic_losses(linear_critic(w), real, {"D_of_G_of_x": fake}, weights, u, global_batch=4, **kw)
    d_real, d_fake = (real * w).sum((1, 2, 3)), (fake * w).sum((1, 2, 3))
    gp = 10.0 * (np.sqrt((w**2).sum() + 1e-8) - 1.0) ** 2  # a linear critic's gradient is w everywhere
    want = d_fake.mean() - d_real.mean() + gp + 0.001 * (d_real**2).mean()
    np.testing.assert_allclose(full["D(G(x))_gradient_penalty"].numpy(), gp, rtol=1e-5)
    np.testing.assert_allclose(full["discriminator_total_loss"].numpy(), want, rtol=1e-5)
    # two replicas, each reducing by the global batch, sum to the single-device value (the GP included)
    halves = [
        LS.critic_losses(linear_critic(w), real[s], {"D_of_G_of_x": fake[s]}, weights, u[s], global_batch=4, **kw)
        for s in (slice(0, 2), slice(2, 4))
    ]
    for key in ("discriminator_total_loss", "D(G(x))_gradient_penalty", "epsilon_drift_penalty", "D(x)"):
        np.testing.assert_allclose(halves[0][key] + halves[1][key], full[key], rtol=1e-5)


def test_adam_matches_the_reference_update():
    cfg = AdamConfig(learning_rate=0.1, beta1=0.5, beta2=0.99, epsilon=1e-8, clip_norm=None)
    var = tf.Variable([1.0, -2.0])
    other = tf.Variable([5.0])
    opt = Adam([var, other], cfg, "adam")
    w, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for t in range(1, 4):
        g = 2 * w
        opt.apply([tf.constant(g, tf.float32), None], [var, other])
        m, v = 0.5 * m + 0.5 * g, 0.99 * v + 0.01 * g**2
        w = w - 0.1 * np.sqrt(1 - 0.99**t) / (1 - 0.5**t) * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(var.numpy(), w, rtol=1e-5)
    assert other.numpy()[0] == 5.0 and int(opt.iterations.numpy()) == 3  # None gradients are skipped


def run_step(cfg, seed=0):
    nets = build_networks(cfg.model, 8, seed=1)
    ac = cfg.training.optimizers
    encoder = None
    if nets.encoder is not None:
        encoder = Adam(nets.encoder.trainable_variables, ac.encoder, "e")
    opts = {
        "generator": Adam(nets.generator_variables, ac.generator, "g"),
        "discriminator": Adam(nets.critic.trainable_variables, ac.discriminator, "d"),
        "encoder": encoder,
    }
    step = make_replica_step(nets, opts, Phase(2), seed=seed, global_batch=4)
    x = tf.cast(tf.random.stateless_uniform((4, 8, 8, 3), (1, 2), 0, 255, tf.int32), tf.uint8)
    return {k: float(v) for k, v in step(x, tf.constant(3, tf.int64), tf.constant(1.0)).items()}


def weights(**gen):
    return {"ganomaly": {"generator": gen}}


@pytest.mark.parametrize(
    ("gen", "present", "absent"),
    [
        ({}, ["x_minus_G_of_x_l2", "D(G(x))_for_generator"], ["x_minus_G_of_x_l1"]),
        ({"x_minus_G_of_x_l2": 0.0, "x_minus_G_of_x_l1": 2.0}, ["x_minus_G_of_x_l1"], ["x_minus_G_of_x_l2"]),
        ({"D_of_G_of_x": 0.0}, ["x_minus_G_of_x_l2"], ["D(G(x))_for_generator"]),
    ],
)
def test_ganomaly_terms_follow_their_weights(gen, present, absent):
    out = run_step(tiny(loss_weights=weights(**gen)))
    assert all(k in out for k in present) and not any(k in out for k in absent)
    wg = dataclasses.asdict(tiny(loss_weights=weights(**gen)).model.loss_weights.ganomaly.generator)
    want = -wg["D_of_G_of_x"] * out.get("D(G(x))_for_generator", 0.0)
    want += sum(wg[k] * out[k] for k in ("x_minus_G_of_x_l1", "x_minus_G_of_x_l2") if k in out)
    assert out["generator_total_loss"] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_ganomaly_encoder_terms_and_critic_toggles():
    cfg = tiny(
        create_encoder=True,
        loss_weights={
            "ganomaly": {
                "generator": {"Ge_of_x_minus_E_of_G_of_x_l1": 0.5},
                "encoder": {"Ge_of_x_minus_E_of_G_of_x_l2": 1.0},
            }
        },
    )
    out = run_step(cfg)
    assert {"Ge_of_x_minus_E_of_G_of_x_l1", "Ge_of_x_minus_E_of_G_of_x_l2", "encoder_total_loss"} <= set(out)
    assert out["encoder_total_loss"] == pytest.approx(out["Ge_of_x_minus_E_of_G_of_x_l2"], rel=1e-5)
    no_critic = run_step(tiny(loss_weights={"ganomaly": {"discriminator": {"D_of_G_of_x": 0.0}}}))
    assert "D(G(x))_gradient_penalty" not in no_critic and no_critic["discriminator_total_loss"] == 0.0
    no_gp = run_step(tiny(gradient_penalty_coefficient=0.0))
    assert no_gp["D(G(x))_gradient_penalty"] == 0.0
    reg = run_step(tiny(loss_weights={"ganomaly": {"generator": {"kernel_l2": 0.01}}}))
    assert reg["generator_reg_loss"] > 0


BERG_KEYS = [
    "z_minus_E_of_G_of_z",
    "G_of_z_minus_G_of_E_of_G_of_z",
    "E_of_x_minus_E_of_G_of_E_of_x",
    "x_minus_G_of_E_of_x",
]


@pytest.mark.parametrize("key", BERG_KEYS)
def test_berg_terms_follow_their_weights(key):
    zero = {f"{k}_{n}": 0.0 for k in BERG_KEYS for n in ("l1", "l2")}
    gen = {**zero, f"{key}_l2": 1.0, "D_of_G_of_E_of_x": 0.5}
    enc = {**zero, f"{key}_l1": 1.0}
    cfg = tiny(architecture="berg", create_encoder=True, loss_weights={"berg": {"generator": gen, "encoder": enc}})
    out = run_step(cfg)
    terms = {k for k in out if any(k.startswith(b) for b in BERG_KEYS)}
    assert terms == {f"{key}_l1", f"{key}_l2"}
    assert "D(G(z))_for_generator" in out and "D(G(E(x)))_for_generator" in out
    assert "D(G(z))_gradient_penalty" in out and "D(G(E(x)))_gradient_penalty" not in out
    want = -out["D(G(z))_for_generator"] - 0.5 * out["D(G(E(x)))_for_generator"] + out[f"{key}_l2"]
    assert out["generator_total_loss"] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert out["encoder_total_loss"] == pytest.approx(out[f"{key}_l1"], rel=1e-5)
