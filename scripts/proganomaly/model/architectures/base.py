"""The interface every architecture implements, and the registry that maps `model.architecture` to it.

Training, calibration, export and inference talk to a model only through this interface, so an architecture is one
module that subclasses `Architecture` and registers itself with `@register`; nothing outside the model package
branches on its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import tensorflow as tf

from proganomaly.config import ModelConfig
from proganomaly.model.networks import ImageEncoder, num_blocks

ARCHITECTURES: dict[str, type[Architecture]] = {}

# Network ids for the stateless per-layer seeds: fixed per role, so adding a network never moves another's weights.
DECODER, GE, ENCODER, CRITIC = 1, 2, 3, 4


def register(cls: type[Architecture]) -> type[Architecture]:
    """Class decorator: make `cls` the architecture named `cls.name`."""
    if cls.name in ARCHITECTURES:
        raise ValueError(f"architecture {cls.name!r} is registered twice")
    ARCHITECTURES[cls.name] = cls
    return cls


def architecture(name: str) -> type[Architecture]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"model.architecture {name!r} is not one of {sorted(ARCHITECTURES)}") from None


def build_networks(cfg: ModelConfig, patch_size_px: int, seed: int) -> Architecture:
    """Build every network of the configured architecture, with weights drawn deterministically from seed."""
    blocks = num_blocks(patch_size_px)
    cls = architecture(cfg.architecture)
    cls.check_config(cfg, blocks)
    return cls(cfg, blocks, seed)


class Architecture:
    """The networks of one model, and what each stage needs to know about them.

    Subclasses set the class attributes and build `decoder` (and their own networks) in `__init__` before calling
    `_build_encoder_and_critic`, which keeps the variable creation order decoder, own networks, E, critic.
    """

    name: ClassVar[str]
    # Image/latent distance terms: loss-weight key → (tensor a, tensor b) names in the forward dict.
    terms: ClassVar[dict[str, tuple[str, str]]]
    # Fake images the critic can be shown: weight key → forward-dict name.
    fakes: ClassVar[dict[str, str]]
    # Forward-dict recipes: name → fn(forward) giving the tensor, or a dict of tensors computed together.
    recipes: ClassVar[dict[str, Callable]]
    # Encoder loss-weight keys that start with one of these make E learn.
    encoder_term_prefixes: ClassVar[tuple[str, ...]]
    # Whether context masks apply to the generator's image input (the sample grids then show the masked input).
    masks_input: ClassVar[bool]
    # Names of the per-patch values `served_extras` adds to the detector's outputs.
    extra_outputs: ClassVar[tuple[str, ...]] = ()

    decoder: tf.Module
    encoder: ImageEncoder | None
    critic: ImageEncoder

    def __init__(self, cfg: ModelConfig, blocks: int, seed: int):
        self.cfg, self.blocks = cfg, blocks

    @classmethod
    def check_config(cls, cfg: ModelConfig, blocks: int) -> None:
        """Per-block lists must cover every block."""
        for key in ("filters", "kernel_sizes", "unet_skips"):
            if len(getattr(cfg, key)) < blocks:
                raise ValueError(
                    f"model.{key} has {len(getattr(cfg, key))} entries; {blocks} blocks need at least {blocks}"
                )

    def _build_encoder_and_critic(self, seed: int) -> None:
        cfg = self.cfg
        self.encoder = None
        if cfg.create_encoder:
            # No minibatch stddev in encoders: it would make a patch's latent, and so its score, depend on the
            # patches batched with it (docs/deviations.md). Only the critic, which never serves alone, keeps it.
            self.encoder = ImageEncoder(
                cfg, self.blocks, cfg.latent_size, stddev=False, seed=seed, net=ENCODER, name="encoder"
            )
        self.critic = ImageEncoder(
            cfg, self.blocks, 1, stddev=cfg.minibatch_stddev.discriminator, seed=seed, net=CRITIC, name="critic"
        )

    # --- what training needs -------------------------------------------------------------------------------------
    @property
    def generator_modules(self) -> list[tf.Module]:
        """The networks G's optimiser updates, in variable order."""
        return [self.decoder]

    @property
    def generator_variables(self) -> list[tf.Variable]:
        return [v for m in self.generator_modules for v in m.trainable_variables]

    def loss_weights(self):
        """The loss-weight groups (generator, discriminator, encoder) this architecture reads."""
        return self.cfg.architecture_loss_weights

    def trains_encoder(self) -> bool:
        """Whether E gets its own optimiser; E built with no loss weight of this architecture is an error."""
        if not self.cfg.create_encoder:
            return False
        weights = vars(self.loss_weights().encoder)
        if not any(v for k, v in weights.items() if k.startswith(self.encoder_term_prefixes)):
            raise ValueError(
                f"model.create_encoder is true but every {self.name} weight in model.loss_weights.{self.name}.encoder is 0: "
                "E would never learn; give it a loss weight (or set create_encoder: false for ganomaly)"
            )
        return True

    def variable_groups(self) -> dict[str, list[tf.Variable]]:
        """Trainable variables per optimiser: generator, discriminator and, when E learns, encoder."""
        groups = {"generator": self.generator_variables, "discriminator": self.critic.trainable_variables}
        if self.trains_encoder():
            groups["encoder"] = self.encoder.trainable_variables
        return groups

    def train_forward(self, forward) -> None:
        """Compute the forward tensors that must run whatever the loss weights (none by default)."""

    def modules(self) -> dict[str, tf.Module]:
        """Every network by its checkpoint name."""
        out = {"decoder": self.decoder, "critic": self.critic}
        out.update({k: v for k, v in self.inference_modules().items() if k not in out})
        return out

    # --- what calibration, export and inference need -------------------------------------------------------------
    def inference_modules(self) -> dict[str, tf.Module]:
        """The networks saved in the generator weights file (inference needs them; the critic is not among them)."""
        out = {"decoder": self.decoder}
        if self.encoder is not None:
            out["encoder"] = self.encoder
        return out

    def reconstruct(self, x, block: int):
        """Image → its reconstruction at the stable phase of `block` (inference mode: no masks, no noise)."""
        raise NotImplementedError

    def encode(self, x, block: int):
        """Image → latent (N, latent_size)."""
        raise NotImplementedError

    def image_encoder(self) -> ImageEncoder:
        """The network that encodes x for the reconstruction (GANomaly's Ge, Berg's E): its activations are features."""
        raise NotImplementedError

    # The architecture's per-patch latent score and what it is; `latent_distance_missing` names the config key to
    # set when the built networks cannot give it (None when they can).
    latent_distance_definition: ClassVar[str] = ""

    def latent_distance(self, x, block: int):
        """Per-patch latent score (N,)."""
        raise NotImplementedError

    def latent_distance_missing(self) -> str | None:
        return f"no latent distance is defined for model.architecture {self.name!r}"

    def served_extras(self, x, block: int) -> dict:
        """Per-patch values the detector serves besides the maps, named as in `extra_outputs`."""
        return {}
