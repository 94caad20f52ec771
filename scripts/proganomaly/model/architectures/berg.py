"""Berg et al.'s progressive GAN with an encoder: G maps z to an image, E maps images back; x̂ = G(E(x))."""

from __future__ import annotations

import tensorflow as tf

from proganomaly.model.architectures.base import DECODER, Architecture, register
from proganomaly.model.networks import Decoder


def _z(forward):
    cfg = forward.cfg
    shape = (tf.shape(forward["x"])[0], cfg.latent_size)
    return tf.random.stateless_normal(
        shape, forward.seed("berg_z"), mean=cfg.berg_latent_mean, stddev=cfg.berg_latent_stddev
    )


@register
class Berg(Architecture):
    """G (the decoder) maps z to images and E maps images to z; D judges G(z), G(E(x)) and G(E(G(z))).

    The detector serves ‖E(x)‖ as an extra per-patch output.
    """

    name = "berg"
    terms = {  # noqa: RUF012
        "z_minus_E_of_G_of_z": ("z", "E_of_G_of_z"),
        "G_of_z_minus_G_of_E_of_G_of_z": ("G_of_z", "G_of_E_of_G_of_z"),
        "E_of_x_minus_E_of_G_of_E_of_x": ("E_of_x", "E_of_G_of_E_of_x"),
        "x_minus_G_of_E_of_x": ("x", "G_of_E_of_x"),
    }
    fakes = {  # noqa: RUF012
        "D_of_G_of_z": "G_of_z",
        "D_of_G_of_E_of_x": "G_of_E_of_x",
        "D_of_G_of_E_of_G_of_z": "G_of_E_of_G_of_z",
    }
    recipes = {  # noqa: RUF012
        "z": _z,
        "G_of_z": lambda f: f.decode(f["z"]),
        "E_of_G_of_z": lambda f: f.encode(f["G_of_z"]),
        "G_of_E_of_G_of_z": lambda f: f.decode(f["E_of_G_of_z"]),
        "E_of_x": lambda f: f.encode(f["x"]),
        "G_of_E_of_x": lambda f: f.decode(f["E_of_x"]),
        "E_of_G_of_E_of_x": lambda f: f.encode(f["G_of_E_of_x"]),
    }
    encoder_term_prefixes = ("D_of", "z_", "G_of", "E_of", "x_")
    masks_input = False
    extra_outputs = ("latent_norm",)

    def __init__(self, cfg, blocks: int, seed: int):
        super().__init__(cfg, blocks, seed)
        self.decoder = Decoder(cfg, blocks, [0] * blocks, seed=seed, net=DECODER, name="decoder")
        self._build_encoder_and_critic(seed)

    @classmethod
    def check_config(cls, cfg, blocks: int) -> None:
        super().check_config(cfg, blocks)
        if not cfg.create_encoder:
            raise ValueError("model.architecture 'berg' needs the encoder E: set model.create_encoder: true")

    def generate(self, z, block: int, transition: bool, alpha=1.0):
        """(z, G(z)): Berg's generator is the decoder alone."""
        return z, self.decoder(z, block, transition, alpha)

    def reconstruct(self, x, block: int):
        return self.decoder(self.encode(x, block), block, False)

    def encode(self, x, block: int):
        return self.encoder(x, block, False)[0]

    def image_encoder(self):
        return self.encoder

    latent_distance_definition = "Berg's latent norm ||E(x)||_2"

    def latent_distance_missing(self) -> str | None:
        return None

    def latent_distance(self, x, block: int):
        """Berg's latent norm ‖E(x)‖₂ (z ~ N(0, I) in training, so a far latent is an unlikely image)."""
        z = tf.cast(self.encode(x, block), tf.float32)
        return tf.norm(tf.reshape(z, (tf.shape(z)[0], -1)), axis=-1)

    def served_extras(self, x, block: int) -> dict:
        return {"latent_norm": self.latent_distance(x, block)}
