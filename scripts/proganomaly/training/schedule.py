"""The growth schedule in images: base, then a fade-in and a stable phase per block, each with its batch size."""

from __future__ import annotations

import dataclasses

from proganomaly.config import TrainingConfig
from proganomaly.model.networks import Phase, phases


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    phase: Phase
    batch_size: int
    iterations: int  # batches; each gives one critic and one generator update

    @property
    def images(self) -> int:
        return self.iterations * self.batch_size

    def alpha(self, iteration: int) -> float:
        """Fade-in weight of the new block for the 0-based iteration: linear from 1/n to 1, restarted per phase."""
        if not self.phase.transition:
            return 1.0
        return min((iteration + 1) / self.iterations, 1.0)


def plan(cfg: TrainingConfig, blocks: int) -> list[PhasePlan]:
    """One PhasePlan per growth phase; phase_images[b] is rounded down to whole batches (at least one)."""
    for key in ("batch_sizes", "phase_images"):
        if len(getattr(cfg, key)) < blocks:
            raise ValueError(f"training.{key} has {len(getattr(cfg, key))} entries; {blocks} blocks need {blocks}")
    out = []
    for ph in phases(blocks):
        bs = cfg.batch_sizes[ph.block]
        out.append(PhasePlan(ph, bs, max(cfg.phase_images[ph.block] // bs, 1)))
    return out


def total_images(plans: list[PhasePlan]) -> int:
    return sum(p.images for p in plans)
