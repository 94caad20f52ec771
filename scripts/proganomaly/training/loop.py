"""The progressive training loop: phases in images, compiled steps, NaN rollback; its collaborators keep the
checkpoints (`checkpoint`), the held-out error (`heldout`), the sample grids (`samples`) and the logs (`logs`).

Everything random is a function of the seed and the NaN-rollback count: initial weights (stateless per layer), the
data order (make_dataset's seeded shuffle, re-created per phase and skipped forward on resume) and the step's masks
and noise (stateless, keyed on the global step). With op determinism on, a run killed and resumed ends with the same
weights as an uninterrupted one; a rollback replays its window with new numbers, so it does not meet the same NaN.

A phase ends with a checkpoint first, then its held-out error, sample grid and weights: a crash in those repeats
only them (`_finish_pending_phase` on resume), never the phase's training.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from proganomaly.common.devices import scope
from proganomaly.common.io import write_json
from proganomaly.common.runlog import Progress
from proganomaly.model import io as model_io
from proganomaly.model.architectures import build_networks
from proganomaly.model.networks import num_blocks
from proganomaly.training.checkpoint import Checkpointer, Counters
from proganomaly.training.heldout import HELDOUT_FIELDS, HeldoutEvaluator, HeldoutFn
from proganomaly.training.logs import TrainingLogs, read_csv
from proganomaly.training.optim import build_optimizers
from proganomaly.training.precision import COMPUTE_DTYPES, LossScale
from proganomaly.training.samples import SampleGrids
from proganomaly.training.schedule import PhasePlan, plan, total_images
from proganomaly.training.spec import RunSpec, fingerprint, phase_seed, step_seed
from proganomaly.training.steps import loss_fields, make_train_step

log = logging.getLogger("proganomaly.training")

DatasetFn = Callable[[int, int, int], tf.data.Dataset]  # (resolution, batch size, seed) → endless uint8 batches


class NonFiniteLoss(RuntimeError):
    pass


class Trainer:
    def __init__(self, spec: RunSpec, out_dir, dataset_fn: DatasetFn, heldout_fn: HeldoutFn | None = None, *,
                 checkpoint_dir=None, data_fingerprint: str = "", strategy=None):  # fmt: skip
        self.spec, self.out, self.dataset_fn = spec, Path(out_dir), dataset_fn
        self.strategy = strategy if strategy is not None and strategy.num_replicas_in_sync > 1 else None
        self.cfg = spec.training
        self.blocks = num_blocks(spec.patch_size_px)
        self.plans = plan(self.cfg, self.blocks)
        self.compute_dtype = COMPUTE_DTYPES[self.cfg.precision]
        with scope(self.strategy):
            self.nets = build_networks(spec.model, spec.patch_size_px, spec.seed)
            self.optimizers = build_optimizers(self.nets, self.cfg.optimizers)
            self.counters = Counters()
            self.loss_scale = LossScale() if self.cfg.precision == "float16" else None
        objects = {**self.nets.modules(), **{f"opt_{k}": v for k, v in self.optimizers.items() if v is not None}}
        if self.loss_scale is not None:
            objects["loss_scale"] = self.loss_scale
        state_dir = Path(checkpoint_dir or self.out / "checkpoints")
        self.checkpoints = Checkpointer(state_dir, objects, self.counters, fingerprint(spec, data_fingerprint),
                                        keep=self.cfg.keep_checkpoints, every_minutes=self.cfg.checkpoint_every_minutes,
                                        every_images=self.cfg.checkpoint_every_images)  # fmt: skip
        self.logs = TrainingLogs(state_dir, loss_fields(self.nets, self.optimizers["encoder"] is not None),
                                 HELDOUT_FIELDS)  # fmt: skip
        self.heldout = HeldoutEvaluator(self.nets, heldout_fn, spec.patch_size_px, self.logs.heldout,
                                        batch_size=self.cfg.heldout_batch_size, keep=self.cfg.sample_images)  # fmt: skip
        self.samples = SampleGrids(self.nets, spec.model.mask, spec.seed, state_dir / "samples",
                                   cell=max(spec.patch_size_px, 32))  # fmt: skip
        self.timings: dict[int, dict] = {}

    def run(self) -> dict:
        """Train (resuming from the last checkpoint when one matches), write the outputs and return a summary."""
        resumed = self.checkpoints.restore()
        resumed_from = dict(self.counters) if resumed else None
        self.logs.open(self.counters["global_step"] if resumed else None)
        if resumed:
            c = self.counters
            log.info("resuming from checkpoint at global step %d (phase %d, iteration %d)", c["global_step"],
                     c["phase_index"], c["phase_iteration"])  # fmt: skip
            self._finish_pending_phase()
        else:
            self.heldout.evaluate(0, "initial", -1, self.counters)
            self.checkpoints.save()
        progress = Progress(total_images(self.plans) - self.counters["images_seen"], "training", unit="images",
                            logger=log)  # fmt: skip
        t0 = time.perf_counter()
        self._run_phases_with_rollback(progress)
        self.logs.close()
        self.logs.publish(self.out)
        self._write_model()
        return self._summary(resumed_from, time.perf_counter() - t0)

    def _run_phases_with_rollback(self, progress: Progress) -> None:
        """Run the remaining phases; on a non-finite loss go back to the last checkpoint and run on from there."""
        while True:
            try:
                while self.counters["phase_index"] < len(self.plans):
                    self._run_phase(self.plans[self.counters["phase_index"]], progress)
                return
            except NonFiniteLoss as err:
                rollbacks = self.counters["nan_rollbacks"] + 1
                if rollbacks > self.cfg.max_nan_rollbacks:
                    raise NonFiniteLoss(
                        f"{err}; gave up after {self.cfg.max_nan_rollbacks} rollbacks (training.max_nan_rollbacks). "
                        "Lower the learning rates, raise gradient_penalty_coefficient or check the input records."
                    ) from err
                log.warning("%s: rolling back to the last checkpoint (rollback %d of at most %d)", err, rollbacks,
                            self.cfg.max_nan_rollbacks)  # fmt: skip
                self.logs.close()
                self.checkpoints.restore()
                self.counters["nan_rollbacks"] = rollbacks
                self.logs.open(self.counters["global_step"])

    def _run_phase(self, p: PhasePlan, progress: Progress) -> None:
        """Run one phase from where the counters stand, then evaluate, sample and checkpoint it."""
        c, cfg = self.counters, self.cfg
        step = make_train_step(
            self.nets, self.optimizers, p.phase, seed=step_seed(self.spec.seed, c["nan_rollbacks"]),
            global_batch=p.batch_size, compute_dtype=self.compute_dtype, jit_compile=cfg.jit_compile,
            strategy=self.strategy, loss_scale=self.loss_scale,
        )  # fmt: skip
        batches = self._batches(p, c["phase_iteration"])
        log.info("phase %d/%d %s: batch %d, %d iterations (%d images), from iteration %d", c["phase_index"] + 1,
                 len(self.plans), p.phase.name, p.batch_size, p.iterations, p.images, c["phase_iteration"])  # fmt: skip
        t0, done0 = time.perf_counter(), c["phase_iteration"]
        rate = _Rate(c["images_seen"])
        while c["phase_iteration"] < p.iterations:
            alpha = p.alpha(c["phase_iteration"])
            out = step(next(batches), tf.constant(c["global_step"], tf.int64), tf.constant(alpha, tf.float32))
            before = c["images_seen"]
            c["phase_iteration"] += 1
            c["global_step"] += 1
            c["images_seen"] += p.batch_size
            last = c["phase_iteration"] == p.iterations
            # Time-based saves are not logged: the log must not depend on when the clock said to save.
            do_ckpt = not last and self.checkpoints.due(before)
            if c["global_step"] % cfg.log_every_steps == 0 or last:
                self._log_step(out, p, alpha, rate.update(c["images_seen"]))
            elif do_ckpt:
                self._check_finite(out, p)  # never save a state that went non-finite
            progress.update(p.batch_size)
            if do_ckpt:
                self.checkpoints.save()
        seconds = time.perf_counter() - t0
        self.timings[c["phase_index"]] = {
            "iterations_this_run": p.iterations - done0,
            "seconds_this_run": round(seconds, 3),
            "images_per_s_this_run": round((p.iterations - done0) * p.batch_size / max(seconds, 1e-9), 2),
        }
        c["phase_index"] += 1
        c["phase_iteration"] = 0
        self.checkpoints.save()
        self._finish_phase(c["phase_index"] - 1)

    def _finish_phase(self, index: int) -> None:
        """The held-out error, sample grid and (optionally) weights of the finished phase `index`."""
        p, c = self.plans[index], self.counters
        x = self.heldout.evaluate(p.phase.block, p.phase.name, index, c)
        if x is not None:
            self.samples.write(x[: self.cfg.sample_images], p.phase.block, index, p.phase.name)
        if self.cfg.save_phase_weights:
            model_io.save_weights(self.nets, self.out / "phases" / f"phase{index:02d}_{p.phase.name}.weights.h5")

    def _finish_pending_phase(self) -> None:
        """Redo the end of the last phase when the run stopped between its checkpoint and its held-out row."""
        c = self.counters
        if c["phase_index"] == 0 or c["phase_iteration"] != 0:
            return
        done = {int(r["phase_index"]) for r in read_csv(self.logs.heldout.path)}
        if c["phase_index"] - 1 not in done:
            self._finish_phase(c["phase_index"] - 1)

    def _batches(self, p: PhasePlan, skip: int):
        c = self.counters
        ds = self.dataset_fn(
            p.phase.resolution, p.batch_size, phase_seed(self.spec.seed, c["phase_index"], c["nan_rollbacks"])
        )
        ds = ds.skip(skip)
        if self.strategy:
            ds = self.strategy.experimental_distribute_dataset(ds)
        return iter(ds)

    def _check_finite(self, out: dict, p: PhasePlan) -> dict:
        """The step's losses as floats; a non-finite one raises NonFiniteLoss."""
        values = {k: float(v.numpy()) for k, v in out.items()}
        bad = sorted(k for k, v in values.items() if not math.isfinite(v))
        if bad:
            raise NonFiniteLoss(
                f"non-finite loss at global step {self.counters['global_step']} ({p.phase.name}): {bad}"
            )
        return values

    def _log_step(self, out: dict, p: PhasePlan, alpha: float, images_per_s: float) -> None:
        """Write the step's losses to the loss log; a non-finite one raises NonFiniteLoss."""
        c = self.counters
        values = self._check_finite(out, p)
        self.logs.loss.write({**values, "global_step": c["global_step"], "phase_index": c["phase_index"],
                              "phase": p.phase.name, "resolution": p.phase.resolution, "alpha": alpha,
                              "images_seen": c["images_seen"], "images_per_s": images_per_s})  # fmt: skip

    def _write_model(self) -> None:
        model_io.save_weights(self.nets, self.out / model_io.WEIGHTS)
        record = model_io.model_record(self.spec.model, self.spec.patch_size_px, self.spec.seed,
                                       blocks=self.blocks, final_phase=self.plans[-1].phase.name)  # fmt: skip
        write_json(self.out / model_io.MODEL_JSON, record)

    def _summary(self, resumed_from: dict | None, seconds: float) -> dict:
        c = self.counters
        phases = [
            {"phase_index": i, "phase": p.phase.name, "resolution": p.phase.resolution, "transition": p.phase.transition,
             "batch_size": p.batch_size, "iterations": p.iterations, "images": p.images,
             "critic_updates": p.iterations, "generator_updates": p.iterations, **self.timings.get(i, {})}
            for i, p in enumerate(self.plans)
        ]  # fmt: skip
        return {
            "phases": phases,
            "heldout": read_csv(self.logs.heldout.path),
            "total_images": total_images(self.plans),
            "global_steps": c["global_step"],
            "critic_updates": c["global_step"],
            "generator_updates": c["global_step"],
            "nan_rollbacks": c["nan_rollbacks"],
            "resumed_from": resumed_from,
            "seconds_this_run": round(seconds, 3),
            "fingerprint": self.checkpoints.store.fingerprint,
        }


class _Rate:
    """Images per second since the previous update."""

    def __init__(self, images_seen: int):
        self.t, self.images = time.perf_counter(), images_seen

    def update(self, images_seen: int) -> float:
        now = time.perf_counter()
        rate = (images_seen - self.images) / max(now - self.t, 1e-9)
        self.t, self.images = now, images_seen
        return rate
