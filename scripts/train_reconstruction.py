"""Rule train_reconstruction: progressive GAN training on the train slides' records.

Held-out patches: the first training.heldout_examples patches (record order) of the calibrate slides, which training
never reads; their reconstruction error is logged after every phase.

With stain.augment_sigma > 0 the training batches (never the held-out ones) get Tellez's HED jitter
(proganomaly.training.augment), seeded by each phase's data seed and the batch index.
"""

import hashlib
import logging
import os
from pathlib import Path

threads = max(int(snakemake.threads), 1)
# Thread pools must be sized before TensorFlow starts.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(min(2, threads)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from proganomaly.common import runlog  # noqa: E402
from proganomaly.common.devices import replica_strategy  # noqa: E402
from proganomaly.config import from_params  # noqa: E402
from proganomaly.data import records  # noqa: E402

log = runlog.setup_logging(snakemake.log[0])
logging.getLogger("absl").setLevel(logging.WARNING)  # one line per checkpoint shard otherwise

import tensorflow as tf  # noqa: E402

from proganomaly.training.augment import stain_jitter  # noqa: E402
from proganomaly.training.loop import Trainer  # noqa: E402
from proganomaly.training.spec import RunSpec, enable_determinism  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))

config = from_params(snakemake.params, snakemake.rule)
out_dir = Path(snakemake.output.model).parent
train_manifests = list(snakemake.input.manifests)
heldout_manifests = list(snakemake.input.heldout)
patch = config.tiling.patch_size_px

if not train_manifests:
    raise SystemExit("no slide has split 'train' in the slide sheet: nothing to train on")
counts = {res: records.count_examples(train_manifests, res) for res in (4, patch)}
if counts[patch] == 0:
    raise SystemExit(f"the train slides have no {patch}px patches ({train_manifests}); check tiling settings")
log.info("training on %d patches from %d train slides", counts[patch], len(train_manifests))

gpus = tf.config.list_physical_devices("GPU")
replicas = config.resources.gpus.training
# The replica count changes the numbers (per-replica masks and noise), so it comes from the config, not the node.
strategy = replica_strategy(replicas, "resources.gpus.training")
log.info("devices: %d GPU(s) seen, %d used%s, %d CPU threads", len(gpus), replicas if gpus else 0,
         " with MirroredStrategy" if strategy else "", threads)  # fmt: skip
if not gpus:
    enable_determinism(config.seed)
else:
    tf.keras.utils.set_random_seed(config.seed)


def dataset_fn(resolution, batch_size, seed):
    buffer = records.buffer_examples(train_manifests, resolution, config.training.shuffle_buffer_mb)
    log.info("%d px: shuffle buffer of %d examples (training.shuffle_buffer_mb=%g)", resolution, buffer,
             config.training.shuffle_buffer_mb)  # fmt: skip
    ds = records.make_dataset(train_manifests, resolution, batch_size=batch_size, shuffle=True, seed=seed,
                              repeat=True, drop_remainder=True, shuffle_buffer=buffer)  # fmt: skip
    return stain_jitter(ds, config.stain.augment_sigma, seed)


def heldout_fn(resolution):
    """The first heldout_examples patches in record order (the same ones at every resolution), streamed."""
    n = config.training.heldout_examples
    if not heldout_manifests or n == 0:
        return None
    return records.make_dataset(heldout_manifests, resolution, batch_size=None, shuffle=False).take(n)


if not heldout_manifests:
    log.warning("no calibrate slides: no held-out error and no sample grids (samples/ stays empty)")

data_bytes = b"".join(Path(p).read_bytes() for p in train_manifests)
if config.stain.augment_sigma > 0:  # the jitter changes the numbers: a checkpoint without it must not be resumed
    data_bytes += f"stain.augment_sigma={config.stain.augment_sigma!r}".encode()
data_fingerprint = hashlib.sha256(data_bytes).hexdigest()
spec = RunSpec(config.model, config.training, config.seed, patch, replicas=replicas)
trainer = Trainer(spec, out_dir, dataset_fn, heldout_fn, data_fingerprint=data_fingerprint, strategy=strategy)
summary = trainer.run()
Path(snakemake.output.samples).mkdir(parents=True, exist_ok=True)
runlog.write_json(
    snakemake.output.training,
    runlog.provenance(
        config.to_dict(),
        train_manifests=train_manifests,
        heldout_manifests=heldout_manifests,
        heldout_definition="first training.heldout_examples patches (record order) of the calibrate slides",
        train_examples=counts[patch],
        devices={
            "gpus": len(gpus),
            "replicas": replicas,
            "strategy": "MirroredStrategy" if strategy else "single device",
            "threads": threads,
        },
        **summary,
    ),
)
logging.getLogger("proganomaly").info("training done: %s", snakemake.output.weights)
