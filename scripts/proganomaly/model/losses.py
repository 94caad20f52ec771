"""Loss terms of GANomaly, Berg and the WGAN-GP critic, as functions of tensors.

Every per-example value is reduced with ``sum / global_batch`` so that under MirroredStrategy the per-replica losses
(and their gradients) sum to the global-batch mean: this also scales the gradient penalty and drift correctly,
where the original used a per-replica mean (multiplying them by the number of replicas). Terms whose weights are all
zero are never computed. Term names follow the original's logged keys; which terms an architecture has is its
module's business (`model.architectures`).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


def _axes(x):
    return list(range(1, len(x.shape)))


def l1(a, b, normalize: bool = True):
    """Per-example L1: mean (or sum) over the non-batch axes of |a - b|, + 1e-8 as in the original."""
    d = tf.abs(tf.cast(a, tf.float32) - tf.cast(b, tf.float32))
    return (tf.reduce_mean(d, _axes(d)) if normalize else tf.reduce_sum(d, _axes(d))) + 1e-8


def l2(a, b, normalize: bool = True):
    """Per-example squared error: mean (or sum) over the non-batch axes of (a - b)² (no square root)."""
    d = tf.square(tf.cast(a, tf.float32) - tf.cast(b, tf.float32))
    return tf.reduce_mean(d, _axes(d)) if normalize else tf.reduce_sum(d, _axes(d))


def kernel_penalty(variables, l1_weight: float, l2_weight: float, replicas: int = 1):
    """(l1·Σ|W| + l2·ΣW²) / replicas over the kernels (biases are not regularised); 0 without work when both weights
    are 0. Under MirroredStrategy every replica adds its share and the gradients are summed, so the penalty counts once.
    """
    kernels = [v for v in variables if "kernel" in v.name]
    total = tf.constant(0.0)
    if l1_weight:
        total += l1_weight * tf.add_n([tf.reduce_sum(tf.abs(k)) for k in kernels])
    if l2_weight:
        total += l2_weight * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])
    return total / float(replicas) if replicas > 1 else total


def gradient_penalty(critic: Callable, real, fake, u, target: float = 1.0):
    """Per-example (‖∇D(x_mix)‖ - t)² / t² with x_mix = real + u·(fake - real); multiply by λ outside.

    ∇ is of Σ D(x_mix) with respect to x_mix, ‖·‖ = √(Σ_{h,w,c} g² + 1e-8), as in the original.
    """
    u = tf.reshape(tf.cast(u, real.dtype), (-1, 1, 1, 1))
    mix = real + u * (fake - real)
    with tf.GradientTape() as tape:
        tape.watch(mix)
        d = tf.reduce_sum(critic(mix))
    g = tape.gradient(d, mix)
    norm = tf.sqrt(tf.reduce_sum(tf.square(tf.cast(g, tf.float32)), axis=[1, 2, 3]) + 1e-8)
    return tf.square(norm - target) / (target * target)


def critic_losses(
    critic: Callable,
    real,
    fakes: dict,
    weights,
    u,
    *,
    global_batch: int,
    gp_coefficient: float,
    gp_target: float,
    epsilon_drift: float,
    reg=0.0,
) -> dict:
    """WGAN-GP critic loss: for each fake type k with a non-zero weight,
    ``k_wgan_gp = w_k·mean D(fake_k) - w_x·mean D(x) + λ·GP_k + ε·mean D(x)²``; total = reg + Σ_k.
    """
    reduce = _reducer(global_batch)
    d_real = critic(real)
    out = {"D(x)": reduce(d_real)}
    loss_real = weights.D_of_x * out["D(x)"]
    drift = epsilon_drift * reduce(tf.square(d_real)) if epsilon_drift else tf.constant(0.0)
    out["epsilon_drift_penalty"] = drift
    total = tf.constant(0.0) + reg
    for key, fake in fakes.items():
        w = getattr(weights, key)
        name = _logged(key)
        out[name] = reduce(critic(fake))
        term = w * out[name] - loss_real
        out[f"{name}-D(x)"] = term
        gp = tf.constant(0.0)
        if gp_coefficient:
            gp = gp_coefficient * reduce(gradient_penalty(critic, real, fake, u, gp_target))
        out[f"{name}_gradient_penalty"] = gp
        out[f"{name}_wgan_gp"] = term + gp + drift
        total += out[f"{name}_wgan_gp"]
    out["discriminator_reg_loss"] = tf.constant(0.0) + reg
    out["discriminator_total_loss"] = total
    return out


def _reducer(global_batch: int):
    def reduce(v):
        return tf.reduce_sum(tf.cast(v, tf.float32)) / float(global_batch)

    return reduce


_LOGGED = {
    "D_of_G_of_x": "D(G(x))",
    "D_of_G_of_z": "D(G(z))",
    "D_of_G_of_E_of_x": "D(G(E(x)))",
    "D_of_G_of_E_of_G_of_z": "D(G(E(G(z))))",
}


def _logged(key: str) -> str:
    return _LOGGED.get(key, key)


def wanted_terms(terms: dict, *weight_sets) -> list[tuple[str, str]]:
    """(term, 'l1'|'l2') pairs with a non-zero weight in any of the weight sets."""
    out = []
    for key in terms:
        for norm in ("l1", "l2"):
            if any(getattr(w, f"{key}_{norm}", 0.0) for w in weight_sets):
                out.append((key, norm))
    return out


def network_total(terms: dict, adversarial: dict, weights, reg) -> tf.Tensor:
    """reg − Σ w·mean D(fake) + Σ w·term for one network (G or E)."""
    total = tf.constant(0.0) + reg
    for key, value in adversarial.items():
        w = getattr(weights, key, 0.0)
        if w:
            total -= w * value
    for name, value in terms.items():
        w = getattr(weights, name, 0.0)
        if w:
            total += w * value
    return total


def distance_terms(fwd: dict, wanted, table: dict, *, global_batch: int, normalize: bool) -> dict:
    """Reduced L1/L2 terms, named `{key}_{l1|l2}`, between the forward dict's tensors (`table`: key → (a, b))."""
    reduce = _reducer(global_batch)
    out = {}
    for key, norm in wanted:
        a, b = table[key]
        fn = l1 if norm == "l1" else l2
        out[f"{key}_{norm}"] = reduce(fn(fwd[a], fwd[b], normalize))
    return out
