"""Save and load the trained generator: ``generator.weights.h5`` (one HDF5 dataset per variable, named by its module
path) and ``model.json`` (everything needed to rebuild the networks). ``load_trained`` gives the inference view."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from proganomaly.config import ModelConfig, _build
from proganomaly.model.networks import Networks, build_networks

FORMAT = "proganomaly-generator-v1"
WEIGHTS = "generator.weights.h5"
MODEL_JSON = "model.json"


def named_variables(module: tf.Module, prefix: str) -> dict[str, tf.Variable]:
    """{"prefix/convs/0/1/kernel": variable, …}: stable names from the module's attribute paths."""
    out = {}
    for path, var in module._flatten(predicate=lambda v: isinstance(v, tf.Variable), with_path=True):
        out["/".join([prefix, *map(str, path)])] = var
    return out


def inference_variables(nets: Networks) -> dict[str, tf.Variable]:
    """The variables inference needs: the decoder, Ge (GANomaly) and E when built; not the critic."""
    out = named_variables(nets.decoder, "decoder")
    if nets.ge is not None:
        out.update(named_variables(nets.ge, "ge"))
    if nets.encoder is not None:
        out.update(named_variables(nets.encoder, "encoder"))
    return out


def save_weights(nets: Networks, path: str | Path) -> None:
    """Write the inference variables to an HDF5 file (atomically: temp file, then rename)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as fh:
        fh.attrs["format"] = FORMAT
        for name, var in sorted(inference_variables(nets).items()):
            fh.create_dataset(name, data=var.numpy())
    tmp.replace(path)


def load_weights(nets: Networks, path: str | Path) -> None:
    import h5py

    wanted = inference_variables(nets)
    with h5py.File(path, "r") as fh:
        stored = {}
        fh.visititems(lambda name, obj: stored.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
    if missing or extra:
        raise ValueError(f"{path}: weights do not match model.json (missing {missing[:5]}, unexpected {extra[:5]})")
    for name, var in wanted.items():
        if tuple(stored[name].shape) != tuple(var.shape):
            raise ValueError(f"{path}: {name} has shape {stored[name].shape}, the model needs {tuple(var.shape)}")
        var.assign(stored[name])


def model_record(cfg: ModelConfig, patch_size: int, seed: int, **extra) -> dict:
    return {
        "format": FORMAT,
        "architecture": cfg.architecture,
        "patch_size": int(patch_size),
        "seed": int(seed),
        "model": dataclasses.asdict(cfg),
        **extra,
    }


class TrainedModel(tf.Module):
    """Inference view of a trained model at its final resolution: no masks, no noise; traceable methods."""

    def __init__(self, nets: Networks, patch_size: int):
        super().__init__(name="trained_model")
        self.nets = nets
        self.architecture = nets.cfg.architecture
        self.patch_size = int(patch_size)
        self.block = nets.blocks - 1

    def encode(self, x):
        """float32 NHWC [-1, 1] → latent (N, latent_size): Ge(x) for GANomaly, E(x) for Berg."""
        x = tf.convert_to_tensor(x, tf.float32)
        net = self.nets.ge if self.architecture == "ganomaly" else self.nets.encoder
        return net(x, self.block, False)[0]

    def reconstruct(self, x):
        """float32 NHWC [-1, 1] → reconstruction: G(x) for GANomaly, G(E(x)) for Berg."""
        x = tf.convert_to_tensor(x, tf.float32)
        if self.architecture == "ganomaly":
            return self.nets.generate(x, self.block, False)[1]
        z = self.nets.encoder(x, self.block, False)[0]
        return self.nets.decoder(z, self.block, False)


def load_trained(model_dir: str | Path) -> TrainedModel:
    """Rebuild the networks from model.json and load generator.weights.h5."""
    model_dir = Path(model_dir)
    meta_path = model_dir / MODEL_JSON
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} is missing: train the model first (rule train_reconstruction)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    cfg = _build(ModelConfig, meta["model"], "model.json:model")
    nets = build_networks(cfg, meta["patch_size"], seed=0)
    load_weights(nets, model_dir / WEIGHTS)
    return TrainedModel(nets, meta["patch_size"])


def weights_array(nets: Networks) -> dict[str, np.ndarray]:
    """All variables (critic included) as numpy arrays, for equality checks."""
    out = inference_variables(nets)
    out.update(named_variables(nets.critic, "critic"))
    return {k: v.numpy() for k, v in out.items()}
