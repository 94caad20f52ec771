"""The critic's score D(x) per patch, broadcast to its pixels (one channel), and the critic view other scorers share.

The critic keeps the minibatch-stddev channel it was trained with, but at inference a batch statistic would make a
patch's score depend on its batch mates; the critic view feeds it one fixed value instead: the mean of that channel
over the calibrate patches, in groups as training formed them (fitted, then baked into the SavedModel). Cost: one
critic pass per patch (plus G(x) for the served reconstruction).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tensorflow as tf

from proganomaly.common.pixels import to_unit
from proganomaly.scoring.base import Scorer, ScorerError, Views, per_patch, register


class CriticView:
    """The critic's (logits, per-block activations) of a batch, with the stddev channel fixed to a fitted value."""

    def __init__(self, trained, scorer: str):
        if not getattr(trained, "has_critic", False):
            raise ScorerError(
                f"scorer {scorer!r} reads the critic, but the model's weights file holds none (it was written before "
                "the critic was saved with the generator): rerun train_reconstruction"
            )
        self.trained, self.critic, self.block = trained, trained.nets.critic, trained.block
        self.needs_fit = bool(self.critic.stddev)

    def fit(self, batches: Iterable[np.ndarray]) -> dict:
        """{"critic_stddev": mean of the batch-computed stddev channel over the calibrate patches}."""
        if not self.needs_fit:
            return {}

        @tf.function
        def channel(images):
            h, _ = self.critic.trunk(to_unit(images), self.block, False)
            return tf.reduce_sum(tf.cast(self.critic.stddev_channel(h), tf.float64)) / 16.0

        total, n = 0.0, 0
        for images in batches:
            total, n = total + float(channel(tf.constant(images))), n + len(images)
        if not n:
            raise ScorerError("no calibrate patches to fit the critic's minibatch-stddev value on")
        return {"critic_stddev": total / n}

    def outputs(self, views: Views, state: dict):
        value = state.get("critic_stddev") if self.needs_fit else None
        if self.needs_fit and value is None:
            raise ScorerError("the critic's stddev value was never fitted: rerun fit_error_distribution")
        return views.memo(("critic", value), lambda: self.critic(views.x, self.block, False, stddev_value=value))


@register
class Critic(Scorer):
    name = "critic"
    channels = ("D",)
    definition = "the critic's logit D(x) of each patch, on all its pixels (minibatch-stddev channel fixed)"
    histogram_range = (-100.0, 100.0)
    # The WGAN-GP critic minimises w·mean D(fake) − w_x·mean D(x) (model/losses.py critic_losses) and the generator
    # maximises D(fake): real, i.e. normal, tissue gets the higher logit, so only a lower logit is anomalous.
    directions = (-1,)

    def setup(self, settings: dict) -> None:
        self.view = CriticView(self.trained, self.name)
        self.needs_fit = self.view.needs_fit

    def fit(self, batches) -> None:
        self.state = self.view.fit(batches)

    def features(self, views: Views):
        logits, _ = self.view.outputs(views, self.state)
        return per_patch(logits, int(self.trained.patch_size_px))
