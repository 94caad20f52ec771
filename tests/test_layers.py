"""Layers of the progressive GAN against numpy references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from proganomaly.model import layers as L


def np_conv_same(x, w, b, padding="SAME"):
    """Naive NHWC cross-correlation with TensorFlow's SAME padding (extra pad at the bottom/right) or VALID."""
    k = w.shape[0]
    if padding == "SAME":
        lo = (k - 1) // 2
        x = np.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
    n, h, ww, _ = x.shape
    out = np.zeros((n, h - k + 1, ww - k + 1, w.shape[3]))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = np.einsum("nabc,abcd->nd", x[:, i : i + k, j : j + k], w)
    return out + b


def test_dense_equalized_scales_at_runtime():
    layer = L.Dense(6, 4, seed=(1, 2))
    layer.bias.assign(np.arange(4, dtype=np.float32))
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    ref = x @ (layer.kernel.numpy() * math.sqrt(2 / 6)) + np.arange(4)
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), ref, rtol=1e-5, atol=1e-5)
    # stored weights are N(0, 1): the He constant is applied in the forward pass, not in the initialiser
    big = L.Dense(400, 200, seed=(1, 3))
    assert abs(big.kernel.numpy().std() - 1.0) < 0.02


def test_dense_without_equalized_lr_is_plain_he_normal():
    layer = L.Dense(400, 200, seed=(1, 3), equalized=False)
    assert abs(layer.kernel.numpy().std() - math.sqrt(2 / 400)) < 0.002
    x = np.ones((1, 400), np.float32)
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), x @ layer.kernel.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("k", "padding"), [(3, "SAME"), (4, "SAME"), (1, "SAME"), (4, "VALID")])
def test_conv_matches_numpy(k, padding):
    layer = L.Conv2D(3, 5, k, seed=(4, k), padding=padding)
    layer.bias.assign(np.linspace(-1, 1, 5).astype(np.float32))
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype(np.float32)
    ref = np_conv_same(x, layer.kernel.numpy() * math.sqrt(2 / (k * k * 3)), layer.bias.numpy(), padding)
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), ref, rtol=1e-4, atol=1e-4)


def test_same_seed_same_weights():
    a, b, c = L.Conv2D(3, 4, 3, seed=(9, 1)), L.Conv2D(3, 4, 3, seed=(9, 1)), L.Conv2D(3, 4, 3, seed=(9, 2))
    np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
    assert not np.array_equal(a.kernel.numpy(), c.kernel.numpy())


def test_pixel_norm():
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 8)).astype(np.float32)
    ref = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(L.pixel_norm(tf.constant(x)).numpy(), ref, rtol=1e-5)
    z = np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32)
    np.testing.assert_allclose((L.pixel_norm(tf.constant(z)).numpy() ** 2).mean(-1), 1.0, rtol=1e-5)


def np_minibatch_stddev(x, group_size, averaging=True):
    n = x.shape[0]
    g = min(group_size, n)
    if n % g:
        g = n
    groups = n // g
    out = np.zeros((*x.shape[:3], 1))
    for i in range(n):
        members = x[[j for j in range(n) if j % groups == i % groups]]
        sd = np.sqrt(members.var(axis=0) + 1e-8)  # population variance
        out[i] = sd.mean() if averaging else sd.mean(-1, keepdims=True)
    return np.concatenate([x, out], axis=-1)


@pytest.mark.parametrize(("n", "group"), [(8, 4), (6, 4), (2, 4), (4, 0)])
@pytest.mark.parametrize("averaging", [True, False])
def test_minibatch_stddev(n, group, averaging):
    x = np.random.default_rng(n).normal(size=(n, 4, 4, 3)).astype(np.float32)
    got = L.minibatch_stddev(tf.constant(x), group, averaging).numpy()
    np.testing.assert_allclose(got, np_minibatch_stddev(x, group if group > 0 else 4, averaging), rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_of_one_example_is_the_epsilon_constant():
    got = L.minibatch_stddev(tf.ones((1, 4, 4, 2)), 4).numpy()
    np.testing.assert_allclose(got[..., -1], 1e-4, rtol=1e-3)


def test_fade_in_endpoints_and_midpoint():
    new, old = tf.fill((2, 2), 3.0), tf.fill((2, 2), -1.0)
    np.testing.assert_array_equal(L.fade_in(1.0, new, old).numpy(), new.numpy())
    np.testing.assert_array_equal(L.fade_in(0.0, new, old).numpy(), old.numpy())
    np.testing.assert_allclose(L.fade_in(0.25, new, old).numpy(), 0.25 * 3 - 0.75)


def test_up_and_down_sampling():
    x = np.random.default_rng(5).normal(size=(2, 3, 5, 4)).astype(np.float32)
    up = L.upsample2x(tf.constant(x)).numpy()
    np.testing.assert_array_equal(up, x.repeat(2, axis=1).repeat(2, axis=2))
    np.testing.assert_array_equal(up, tf.image.resize(x, (6, 10), method="nearest").numpy())
    down = L.downsample2x(tf.constant(up)).numpy()
    np.testing.assert_allclose(down, x, rtol=1e-6)
