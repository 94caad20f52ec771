"""Save and load the trained generator: ``generator.weights.h5`` (one HDF5 dataset per variable, named by its module
path) and ``model.json`` (everything needed to rebuild the networks). ``load_trained`` gives the inference view."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from proganomaly.common.io import atomic_path
from proganomaly.config import ModelConfig, _build
from proganomaly.model.architectures import Architecture, build_networks

FORMAT = "proganomaly-generator-v1"
WEIGHTS = "generator.weights.h5"
MODEL_JSON = "model.json"


def named_variables(module: tf.Module, prefix: str) -> dict[str, tf.Variable]:
    """{"prefix/convs/0/1/kernel": variable, …}: stable names from the module's attribute paths."""
    out = {}
    for path, var in module._flatten(predicate=lambda v: isinstance(v, tf.Variable), with_path=True):
        out["/".join([prefix, *map(str, path)])] = var
    return out


def inference_variables(nets: Architecture) -> dict[str, tf.Variable]:
    """The variables inference needs (the architecture's inference modules; not the critic)."""
    out = {}
    for name, module in nets.inference_modules().items():
        out.update(named_variables(module, name))
    return out


def critic_variables(nets: Architecture) -> dict[str, tf.Variable]:
    """The critic's variables, saved beside the generator's for the critic-based scorers."""
    return named_variables(nets.critic, "critic")


def save_weights(nets: Architecture, path: str | Path) -> None:
    """Write the inference and critic variables to an HDF5 file (atomically: temp file, then rename)."""
    import h5py

    with atomic_path(path, ".tmp") as tmp, h5py.File(tmp, "w") as fh:
        fh.attrs["format"] = FORMAT
        for name, var in sorted({**inference_variables(nets), **critic_variables(nets)}.items()):
            fh.create_dataset(name, data=var.numpy())


def load_weights(nets: Architecture, path: str | Path) -> bool:
    """Assign the stored variables; True when the file also holds the critic (files written before it did not)."""
    import h5py

    wanted = inference_variables(nets)
    with h5py.File(path, "r") as fh:
        stored = {}
        fh.visititems(lambda name, obj: stored.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    critic = critic_variables(nets)
    has_critic = any(name in stored for name in critic)
    if has_critic:
        wanted.update(critic)
    missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
    if missing or extra:
        raise ValueError(f"{path}: weights do not match model.json (missing {missing[:5]}, unexpected {extra[:5]})")
    for name, var in wanted.items():
        if tuple(stored[name].shape) != tuple(var.shape):
            raise ValueError(f"{path}: {name} has shape {stored[name].shape}, the model needs {tuple(var.shape)}")
        var.assign(stored[name])
    return has_critic


def model_record(cfg: ModelConfig, patch_size_px: int, seed: int, **extra) -> dict:
    return {
        "format": FORMAT,
        "architecture": cfg.architecture,
        "patch_size_px": int(patch_size_px),
        "seed": int(seed),
        "model": dataclasses.asdict(cfg),
        **extra,
    }


class TrainedModel(tf.Module):
    """Inference view of a trained model at its final resolution: no masks, no noise; traceable methods.

    What calibration, scorers and export use: `reconstruct`, `encode`, `served_extras` (with `extra_outputs` naming
    them), `architecture` and `patch_size_px`; `nets` and `block` for scorers that read a network's features, and
    `has_critic` (False for weights files written before the critic was saved with the generator).
    """

    def __init__(self, nets: Architecture, patch_size_px: int, has_critic: bool = True):
        super().__init__(name="trained_model")
        self.nets = nets
        self.has_critic = bool(has_critic)
        self.architecture = nets.name
        self.extra_outputs = nets.extra_outputs
        self.patch_size_px = int(patch_size_px)
        self.block = nets.blocks - 1

    def encode(self, x):
        """float32 NHWC [-1, 1] → latent (N, latent_size)."""
        return self.nets.encode(tf.convert_to_tensor(x, tf.float32), self.block)

    def reconstruct(self, x):
        """float32 NHWC [-1, 1] → the raw (unclipped) reconstruction x̂."""
        return self.nets.reconstruct(tf.convert_to_tensor(x, tf.float32), self.block)

    def served_extras(self, x) -> dict:
        """float32 NHWC [-1, 1] → the architecture's extra per-patch outputs (e.g. Berg's latent norm)."""
        return self.nets.served_extras(tf.convert_to_tensor(x, tf.float32), self.block)


def load_trained(model_dir: str | Path) -> TrainedModel:
    """Rebuild the networks from model.json and load generator.weights.h5."""
    model_dir = Path(model_dir)
    meta_path = model_dir / MODEL_JSON
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} is missing: train the model first (rule train_reconstruction)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if "patch_size_px" not in meta:
        raise ValueError(f"{meta_path} has no 'patch_size_px' (written by an older version): retrain the model")
    cfg = _build(ModelConfig, _without_encoder_stddev(meta["model"], meta_path), "model.json:model")
    nets = build_networks(cfg, meta["patch_size_px"], seed=0)
    has_critic = load_weights(nets, model_dir / WEIGHTS)
    return TrainedModel(nets, meta["patch_size_px"], has_critic)


def _without_encoder_stddev(model: dict, source) -> dict:
    """model.json's model section without the removed `minibatch_stddev.encoders` key (older models wrote it)."""
    stddev = dict(model.get("minibatch_stddev", {}))
    if stddev.pop("encoders", False):
        raise ValueError(
            f"{source}: this model was trained with minibatch stddev in its encoders, so its scores depend on the "
            "batch; that option is gone (docs/deviations.md): retrain it (rule train_reconstruction)"
        )
    return {**model, "minibatch_stddev": stddev} if "minibatch_stddev" in model else model


def weights_array(nets: Architecture) -> dict[str, np.ndarray]:
    """All variables (critic included) as numpy arrays, for equality checks."""
    out = inference_variables(nets)
    out.update(critic_variables(nets))
    return {k: v.numpy() for k, v in out.items()}
