"""GANomaly with a U-Net generator: G(x) = Gd(Ge(x), skips of Ge), trained on context-masked x; optional E."""

from __future__ import annotations

import tensorflow as tf

from proganomaly.model.architectures.base import DECODER, GE, Architecture, register
from proganomaly.model.networks import Decoder, ImageEncoder


def _generate(forward) -> dict:
    """Ge(x̃) and G(x̃) of the masked input x̃, with latent noise and fake noise: computed together."""
    z, img = forward.generate(forward["x_masked"])
    return {"Ge_of_x": z, "G_of_x": img}


@register
class Ganomaly(Architecture):
    """Ge and Gd (with U-Net skips) are G; the critic D judges G(x̃); E, when built, learns E(G(x̃)) ≈ Ge(x̃)."""

    name = "ganomaly"
    terms = {  # noqa: RUF012
        "x_minus_G_of_x": ("x", "G_of_x"),
        "Ge_of_x_minus_E_of_G_of_x": ("Ge_of_x", "E_of_G_of_x"),
    }
    fakes = {"D_of_G_of_x": "G_of_x"}  # noqa: RUF012
    recipes = {  # noqa: RUF012
        "x_masked": lambda f: f.masked(),
        "Ge_of_x": _generate,
        "G_of_x": _generate,
        "E_of_G_of_x": lambda f: f.encode(f["G_of_x"]),
    }
    encoder_term_prefixes = ("Ge_of_x",)
    masks_input = True

    def __init__(self, cfg, blocks: int, seed: int):
        super().__init__(cfg, blocks, seed)
        f = cfg.filters
        skips = [(f[0][0] if b == 0 else f[b - 1][1]) if cfg.unet_skips[b] else 0 for b in range(blocks)]
        self.decoder = Decoder(cfg, blocks, skips, seed=seed, net=DECODER, name="decoder")
        self.ge = ImageEncoder(cfg, blocks, cfg.latent_size, stddev=False, seed=seed, net=GE, name="ge")
        self._build_encoder_and_critic(seed)

    @property
    def generator_modules(self) -> list[tf.Module]:
        return [self.ge, self.decoder]

    def generate(self, x, block: int, transition: bool, alpha=1.0, z_noise=None):
        """(z, x̂) = (Ge(x), Gd(Ge(x) [+ noise], skips of Ge))."""
        z, skips = self.ge(x, block, transition, alpha)
        skips = [s if self.cfg.unet_skips[b] else None for b, s in enumerate(skips)]
        z_in = z if z_noise is None else z + z_noise
        return z, self.decoder(tf.cast(z_in, x.dtype), block, transition, alpha, skips)

    def train_forward(self, forward) -> None:
        forward["G_of_x"]  # G(x̃) is the model being trained: it always runs

    def inference_modules(self) -> dict[str, tf.Module]:
        out = {"decoder": self.decoder, "ge": self.ge}
        if self.encoder is not None:
            out["encoder"] = self.encoder
        return out

    def reconstruct(self, x, block: int):
        return self.generate(x, block, False)[1]

    def encode(self, x, block: int):
        return self.ge(x, block, False)[0]

    def image_encoder(self) -> ImageEncoder:
        return self.ge

    latent_distance_definition = "GANomaly's ||Ge(x) - E(G(x))||_2"

    def latent_distance_missing(self) -> str | None:
        if self.encoder is None:
            return "GANomaly's latent distance needs the encoder E: set model.create_encoder: true and retrain"
        return None

    def latent_distance(self, x, block: int):
        z, x_hat = self.generate(x, block, False)
        return tf.norm(z - self.encoder(x_hat, block, False)[0], axis=-1)
