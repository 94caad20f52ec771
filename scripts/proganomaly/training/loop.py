"""The progressive training loop: phases in images, compiled steps, checkpoints, NaN rollback, logs and samples.

Everything random is a function of the seed: initial weights (stateless per layer), the data order (make_dataset's
seeded shuffle, re-created per phase and skipped forward on resume) and the step's masks and noise (stateless,
keyed on the global step). With op determinism on, a run killed and resumed ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from proganomaly.common.runlog import Progress
from proganomaly.config import ModelConfig, TrainingConfig
from proganomaly.model import io as model_io
from proganomaly.model.masks import mask_images
from proganomaly.model.networks import Networks, build_networks, num_blocks
from proganomaly.training import samples as S
from proganomaly.training.checkpoint import CheckpointStore
from proganomaly.training.losslog import CsvLog
from proganomaly.training.optim import Adam
from proganomaly.training.schedule import PhasePlan, plan, total_images
from proganomaly.training.steps import make_train_step, to_float

log = logging.getLogger("proganomaly.training")

LOSS_KEYS = [
    "D(x)", "epsilon_drift_penalty", "discriminator_reg_loss", "discriminator_total_loss",
    "generator_reg_loss", "generator_total_loss", "encoder_reg_loss", "encoder_total_loss",
]  # fmt: skip
HELDOUT_FIELDS = [
    "global_step", "phase_index", "phase", "resolution", "images_seen", "examples",
    "l1", "l2", "l1_full", "l2_full", "l1_full_floor", "l2_full_floor",
]  # fmt: skip
# Training settings that change no number of the result (so changing them does not invalidate a checkpoint).
_NOT_MATH = {
    "checkpoint_every_images", "keep_checkpoints", "log_every_steps", "max_nan_rollbacks",
    "heldout_examples", "sample_images", "save_phase_weights",
}  # fmt: skip

DatasetFn = Callable[[int, int, int], tf.data.Dataset]  # (resolution, batch size, seed) → endless uint8 batches
HeldoutFn = Callable[[int], np.ndarray | None]  # resolution → uint8 (n, r, r, 3) held-out patches, or None


@dataclasses.dataclass(frozen=True)
class RunSpec:
    model: ModelConfig
    training: TrainingConfig
    seed: int
    patch_size: int


class NonFiniteLoss(RuntimeError):
    pass


def enable_determinism(seed: int) -> None:
    """Same seed → same weights on CPU (op determinism also makes tf.data's parallel map keep its order)."""
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fingerprint(spec: RunSpec, data: str = "") -> str:
    """Hash of everything that changes the numbers: model and training config (minus bookkeeping), seed, data."""
    training = {k: v for k, v in dataclasses.asdict(spec.training).items() if k not in _NOT_MATH}
    blob = json.dumps(
        {"model": dataclasses.asdict(spec.model), "training": training, "seed": spec.seed, "patch": spec.patch_size,
         "data": data},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _trains_encoder(cfg: ModelConfig) -> bool:
    if not cfg.create_encoder:
        return False
    weights = dataclasses.asdict(cfg.loss_weights.encoder)
    prefix_ok = ("Ge_of_x",) if cfg.architecture == "ganomaly" else ("D_of", "z_", "G_of", "E_of", "x_")
    if not any(v for k, v in weights.items() if k.startswith(prefix_ok)):
        raise ValueError(
            f"model.create_encoder is true but every {cfg.architecture} weight in model.loss_weights.encoder is 0: "
            "E would never learn; give it a loss weight (or set create_encoder: false for ganomaly)"
        )
    return True


def _phase_seed(seed: int, phase_index: int) -> int:
    return (int(seed) * 1009 + phase_index * 7919 + 17) % (2**31 - 1)


class Trainer:
    def __init__(self, spec: RunSpec, out_dir, dataset_fn: DatasetFn, heldout_fn: HeldoutFn | None = None, *,
                 checkpoint_dir=None, data_fingerprint: str = "", strategy=None):  # fmt: skip
        self.spec, self.out = spec, Path(out_dir)
        self.dataset_fn, self.heldout_fn = dataset_fn, heldout_fn
        self.strategy = strategy if strategy is not None and strategy.num_replicas_in_sync > 1 else None
        self.cfg = spec.training
        self.blocks = num_blocks(spec.patch_size)
        self.plans = plan(self.cfg, self.blocks)
        self.compute_dtype = tf.bfloat16 if self.cfg.precision == "bfloat16" else tf.float32
        scope = self.strategy.scope() if self.strategy else contextlib.nullcontext()
        with scope:
            self.nets: Networks = build_networks(spec.model, spec.patch_size, spec.seed)
            o = self.cfg.optimizers
            self.optimizers = {
                "generator": Adam(self.nets.generator_variables, o.generator, "opt_generator"),
                "discriminator": Adam(self.nets.critic.trainable_variables, o.discriminator, "opt_discriminator"),
                "encoder": Adam(self.nets.encoder.trainable_variables, o.encoder, "opt_encoder")
                if _trains_encoder(spec.model)
                else None,
            }
            self.vars = {k: tf.Variable(0, dtype=tf.int64, trainable=False, name=k) for k in
                         ("phase_index", "phase_iteration", "global_step", "images_seen", "nan_rollbacks")}  # fmt: skip
        tracked = {"decoder": self.nets.decoder, "critic": self.nets.critic, **self.vars}
        tracked.update({f"opt_{k}": v for k, v in self.optimizers.items() if v is not None})
        if self.nets.ge is not None:
            tracked["ge"] = self.nets.ge
        if self.nets.encoder is not None:
            tracked["encoder"] = self.nets.encoder
        # Live logs and samples sit next to the checkpoints (not outputs, so a failed job's cleanup keeps them) and
        # are copied to the output directory when training ends.
        self.state_dir = Path(checkpoint_dir or self.out / "checkpoints")
        self.store = CheckpointStore(
            self.state_dir, tf.train.Checkpoint(**tracked),
            fingerprint(spec, data_fingerprint), keep=self.cfg.keep_checkpoints,
        )  # fmt: skip
        self.loss_log = CsvLog(self.state_dir / "logs" / "loss_log.csv", self._loss_fields())
        self.heldout_log = CsvLog(self.state_dir / "logs" / "heldout_error.csv", HELDOUT_FIELDS)
        self.state = dict.fromkeys(self.vars, 0)
        self.timings: dict[int, dict] = {}
        self._heldout_cache: dict[int, np.ndarray | None] = {}

    # --- bookkeeping ---------------------------------------------------------------------------------------------
    def _loss_fields(self) -> list[str]:
        from proganomaly.model import losses as LS

        w = self.spec.model.loss_weights
        ganomaly = self.spec.model.architecture == "ganomaly"
        fakes = LS.GANOMALY_FAKES if ganomaly else LS.BERG_FAKES
        terms = LS.GANOMALY_TERMS if ganomaly else LS.BERG_TERMS
        enc = [w.encoder] if self.optimizers["encoder"] is not None else []
        keys = [f"{k}_{n}" for k, n in LS.wanted_terms(terms, w.generator, *enc)]
        for k in fakes:
            name = LS._logged(k)
            if getattr(w.discriminator, k):
                keys += [name, f"{name}-D(x)", f"{name}_gradient_penalty", f"{name}_wgan_gp"]
            if getattr(w.generator, k) or (enc and getattr(w.encoder, k, 0.0)):
                keys.append(f"{name}_for_generator")
        meta = ["global_step", "phase_index", "phase", "resolution", "alpha", "images_seen", "images_per_s"]
        return meta + LOSS_KEYS + keys

    def _sync_vars(self) -> None:
        for k, v in self.vars.items():
            v.assign(self.state[k])

    def _save(self) -> None:
        self._sync_vars()
        self.store.save(self.state["global_step"], phase_index=self.state["phase_index"],
                        phase_iteration=self.state["phase_iteration"], images_seen=self.state["images_seen"])  # fmt: skip

    def _restore(self) -> bool:
        info = self.store.restore()
        if info is None:
            return False
        self.state = {k: int(v.numpy()) for k, v in self.vars.items()}
        return True

    def _open_logs(self, resumed: bool) -> None:
        keep = self.state["global_step"] if resumed else None
        self.loss_log.open(keep)
        self.heldout_log.open(keep)

    # --- held-out error and samples ---------------------------------------------------------------------------
    def _heldout(self, res: int) -> np.ndarray | None:
        if res not in self._heldout_cache:
            self._heldout_cache[res] = self.heldout_fn(res) if self.heldout_fn else None
        return self._heldout_cache[res]

    def _reconstruct(self, x: np.ndarray, block: int, chunk: int = 32) -> np.ndarray:
        outs = []
        for i in range(0, len(x), chunk):
            xb = to_float(tf.constant(x[i : i + chunk]))
            outs.append(tf.cast(self.nets.generate(xb, block, False)[1], tf.float32).numpy()
                        if self.nets.ge is not None else
                        self.nets.decoder(self.nets.encoder(xb, block, False)[0], block, False).numpy())  # fmt: skip
        return np.concatenate(outs)

    def _evaluate(self, plan_: PhasePlan | None, phase_index: int) -> None:
        block = plan_.phase.block if plan_ else 0
        res = 4 * 2**block
        x, full = self._heldout(res), self._heldout(self.spec.patch_size)
        if x is None or full is None or not len(x):
            return
        xf, ff = x.astype(np.float32) / 127.5 - 1.0, full.astype(np.float32) / 127.5 - 1.0
        rec = self._reconstruct(x, block)
        f = self.spec.patch_size // res
        up = np.repeat(np.repeat(rec, f, axis=1), f, axis=2)
        floor = np.repeat(np.repeat(xf, f, axis=1), f, axis=2)
        row = {
            "global_step": self.state["global_step"], "phase_index": phase_index,
            "phase": plan_.phase.name if plan_ else "initial", "resolution": res,
            "images_seen": self.state["images_seen"], "examples": len(x),
            "l1": float(np.abs(rec - xf).mean()), "l2": float(np.square(rec - xf).mean()),
            "l1_full": float(np.abs(up - ff).mean()), "l2_full": float(np.square(up - ff).mean()),
            "l1_full_floor": float(np.abs(floor - ff).mean()), "l2_full_floor": float(np.square(floor - ff).mean()),
        }  # fmt: skip
        self.heldout_log.write(row)
        log.info("held-out error after %s: L1 %.4f, L2 %.4f (at %d px: L1 %.4f)", row["phase"], row["l1_full"],
                 row["l2_full"], res, row["l1"])  # fmt: skip
        if plan_ is not None:
            self._samples(x[: self.cfg.sample_images], plan_, phase_index)

    def _samples(self, x: np.ndarray, plan_: PhasePlan, phase_index: int) -> None:
        xf = to_float(tf.constant(x))
        rows = [xf.numpy()]
        m = self.spec.model.mask
        if self.nets.ge is not None and m.percent > 0:
            masked = mask_images(xf, tf.constant([self.spec.seed, 0], tf.int64), percent=m.percent,
                                 shift=m.block_random_shift, fill=m.fill)[0]  # fmt: skip
            rows += [masked.numpy(), self._reconstruct(x, plan_.phase.block), self._reconstruct_float(masked, plan_)]
        else:
            rows.append(self._reconstruct(x, plan_.phase.block))
        name = f"phase{phase_index:02d}_{plan_.phase.name}.png"
        S.write_png(self.state_dir / "samples" / name, S.grid(rows, cell=max(self.spec.patch_size, 32)))

    def _reconstruct_float(self, xf, plan_: PhasePlan) -> np.ndarray:
        return tf.cast(self.nets.generate(xf, plan_.phase.block, False)[1], tf.float32).numpy()

    def _publish(self) -> None:
        """Copy the live logs and sample grids to the output directory."""
        import shutil

        self.out.mkdir(parents=True, exist_ok=True)
        for log_file in (self.loss_log.path, self.heldout_log.path):
            shutil.copyfile(log_file, self.out / log_file.name)
        samples = self.state_dir / "samples"
        (self.out / "samples").mkdir(exist_ok=True)
        if samples.exists():
            shutil.copytree(samples, self.out / "samples", dirs_exist_ok=True)

    # --- the loop ---------------------------------------------------------------------------------------------
    def _dataset(self, p: PhasePlan, skip: int):
        ds = self.dataset_fn(p.phase.resolution, p.batch_size, _phase_seed(self.spec.seed, self.state["phase_index"]))
        ds = ds.skip(skip)
        if self.strategy:
            ds = self.strategy.experimental_distribute_dataset(ds)
        return iter(ds)

    def _run_phases(self, progress: Progress) -> None:
        st, cfg = self.state, self.cfg
        while st["phase_index"] < len(self.plans):
            p = self.plans[st["phase_index"]]
            step = make_train_step(
                self.nets, self.optimizers, p.phase, seed=self.spec.seed, global_batch=p.batch_size,
                compute_dtype=self.compute_dtype, jit_compile=cfg.jit_compile, strategy=self.strategy,
            )  # fmt: skip
            batches = self._dataset(p, st["phase_iteration"])
            log.info("phase %d/%d %s: batch %d, %d iterations (%d images), from iteration %d", st["phase_index"] + 1,
                     len(self.plans), p.phase.name, p.batch_size, p.iterations, p.images, st["phase_iteration"])  # fmt: skip
            t0, done0 = time.perf_counter(), st["phase_iteration"]
            t_log, img_log = t0, st["images_seen"]
            while st["phase_iteration"] < p.iterations:
                alpha = p.alpha(st["phase_iteration"])
                out = step(next(batches), tf.constant(st["global_step"], tf.int64), tf.constant(alpha, tf.float32))
                before = st["images_seen"]
                st["phase_iteration"] += 1
                st["global_step"] += 1
                st["images_seen"] += p.batch_size
                last = st["phase_iteration"] == p.iterations
                do_log = st["global_step"] % cfg.log_every_steps == 0 or last
                do_ckpt = (
                    not last
                    and st["images_seen"] // cfg.checkpoint_every_images > before // cfg.checkpoint_every_images
                )
                if do_log or do_ckpt:
                    values = {k: float(v.numpy()) for k, v in out.items()}
                    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
                    if bad:
                        raise NonFiniteLoss(
                            f"non-finite loss at global step {st['global_step']} ({p.phase.name}): {bad}"
                        )
                    now = time.perf_counter()
                    rate = (st["images_seen"] - img_log) / max(now - t_log, 1e-9)
                    t_log, img_log = now, st["images_seen"]
                    self.loss_log.write({**values, "global_step": st["global_step"], "phase_index": st["phase_index"],
                                         "phase": p.phase.name, "resolution": p.phase.resolution, "alpha": alpha,
                                         "images_seen": st["images_seen"], "images_per_s": rate})  # fmt: skip
                progress.update(p.batch_size)
                if do_ckpt:
                    self._save()
            seconds = time.perf_counter() - t0
            self._evaluate(p, st["phase_index"])
            if cfg.save_phase_weights:
                model_io.save_weights(
                    self.nets, self.out / "phases" / f"phase{st['phase_index']:02d}_{p.phase.name}.weights.h5"
                )
            self.timings[st["phase_index"]] = {
                "iterations_this_run": p.iterations - done0,
                "seconds_this_run": round(seconds, 3),
                "images_per_s_this_run": round((p.iterations - done0) * p.batch_size / max(seconds, 1e-9), 2),
            }
            st["phase_index"] += 1
            st["phase_iteration"] = 0
            self._save()

    def run(self) -> dict:
        """Train (resuming from the last checkpoint when one matches), write the outputs and return a summary."""
        resumed = self._restore()
        resumed_from = dict(self.state) if resumed else None
        self._open_logs(resumed)
        if resumed:
            log.info("resuming from checkpoint at global step %d (phase %d, iteration %d)", self.state["global_step"],
                     self.state["phase_index"], self.state["phase_iteration"])  # fmt: skip
        else:
            self._evaluate(None, -1)
            self._save()
        total = total_images(self.plans)
        progress = Progress(total - self.state["images_seen"], "training", unit="images", logger=log)
        t0 = time.perf_counter()
        while True:
            try:
                self._run_phases(progress)
                break
            except NonFiniteLoss as err:
                rollbacks = self.state["nan_rollbacks"] + 1
                if rollbacks > self.cfg.max_nan_rollbacks:
                    raise NonFiniteLoss(
                        f"{err}; gave up after {self.cfg.max_nan_rollbacks} rollbacks (training.max_nan_rollbacks). "
                        "Lower the learning rates, raise gradient_penalty_coefficient or check the input records."
                    ) from err
                log.warning("%s: rolling back to the last checkpoint (rollback %d of at most %d)", err, rollbacks,
                            self.cfg.max_nan_rollbacks)  # fmt: skip
                self.loss_log.close()
                self.heldout_log.close()
                self._restore()
                self.state["nan_rollbacks"] = rollbacks
                self._open_logs(True)
        self.loss_log.close()
        self.heldout_log.close()
        self._publish()
        model_io.save_weights(self.nets, self.out / model_io.WEIGHTS)
        record = model_io.model_record(self.spec.model, self.spec.patch_size, self.spec.seed,
                                       blocks=self.blocks, final_phase=self.plans[-1].phase.name)  # fmt: skip
        (self.out / model_io.MODEL_JSON).write_text(json.dumps(record, indent=2) + "\n")
        phases = [
            {"phase_index": i, "phase": p.phase.name, "resolution": p.phase.resolution, "transition": p.phase.transition,
             "batch_size": p.batch_size, "iterations": p.iterations, "images": p.images,
             "critic_updates": p.iterations, "generator_updates": p.iterations, **self.timings.get(i, {})}
            for i, p in enumerate(self.plans)
        ]  # fmt: skip
        return {
            "phases": phases,
            "heldout": read_csv(self.heldout_log.path),
            "total_images": total,
            "global_steps": self.state["global_step"],
            "critic_updates": self.state["global_step"],
            "generator_updates": self.state["global_step"],
            "nan_rollbacks": self.state["nan_rollbacks"],
            "resumed_from": resumed_from,
            "seconds_this_run": round(time.perf_counter() - t0, 3),
            "fingerprint": self.store.fingerprint,
        }


def read_csv(path) -> list[dict]:
    """Rows of a numeric CSV log as dicts (numbers parsed)."""
    import csv

    def num(v):
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if f.is_integer() and "." not in v and "e" not in v else f

    with open(path, newline="") as fh:
        return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(fh)]
