"""The GPUs a job runs on: `resources.gpus.<stage>` of them, under one tf.distribute.MirroredStrategy when above 1.

The count comes from the config, never from the node: it is what the rule asked Slurm for (its `gpu` resource), and a
job that sees fewer GPUs stops with a message naming the key instead of silently running on fewer.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger("proganomaly.common.devices")


class DeviceError(RuntimeError):
    """The job sees fewer GPUs than the config asks for."""


def replica_strategy(replicas: int, key: str, devices: list[str] | None = None):
    """None for one replica (TensorFlow's default device); else a MirroredStrategy over `replicas` devices.

    `devices` defaults to the first `replicas` GPUs; tests pass logical CPU devices ("/cpu:0", "/cpu:1"). Raises
    DeviceError naming `key` when fewer GPUs are visible than it asks for. GPUs get memory growth, so one job does not
    claim every GPU's memory up front.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by an earlier call in this process
            pass
    if replicas <= 1:
        return None
    if devices is None:
        if len(gpus) < replicas:
            raise DeviceError(
                f"{key}={replicas} but this job sees {len(gpus)} GPU(s) (CUDA_VISIBLE_DEVICES / the Slurm request): "
                f"ask the scheduler for {replicas} GPUs, or lower {key}"
            )
        devices = [f"/gpu:{i}" for i in range(replicas)]
    if len(devices) != replicas:
        raise DeviceError(f"{key}={replicas} but {len(devices)} device(s) were given: {devices}")
    log.info("MirroredStrategy over %s (%s)", devices, key)
    return tf.distribute.MirroredStrategy(devices)


def scope(strategy):
    """The strategy's scope (variables mirrored on every replica), or a no-op without one."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()
