"""The anomaly-scorer interface and its registry (`calibration.scorer` → class).

A scorer maps a trained model and a batch x (float32 NHWC in [-1, 1]) to per-pixel feature vectors (N, S, S, C),
inside the traced serving and calibration functions. Calibration fits one exact streaming Gaussian to those features
over the calibrate slides; d² under it is the anomaly score that threshold, export, stitching, KDE and evaluation
use, whatever the scorer. A scorer is one module: a subclass of `Scorer` decorated with `@register`.

A scorer that needs its own fitted state (e.g. a per-location Gaussian of encoder or critic features, PaDiM-style)
sets `needs_fit`, fills `self.state` (JSON-able numbers) in `fit`, and reads it in `features`: calibration calls
`fit` on the calibrate patches before the Gaussian, the state is stored with the Gaussian, and the export bakes it
into the SavedModel as constants.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from proganomaly.common.pixels import to_unit

SCORERS: dict[str, type[Scorer]] = {}


class ScorerError(ValueError):
    """Unknown scorer, or files fitted with different scorers; the message names the file and the fix."""


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make `cls` the scorer named `cls.name`."""
    if cls.name in SCORERS:
        raise ValueError(f"scorer {cls.name!r} is registered twice")
    SCORERS[cls.name] = cls
    return cls


def make_scorer(name: str, trained, state: dict | None = None) -> Scorer:
    try:
        cls = SCORERS[name]
    except KeyError:
        raise ScorerError(f"calibration.scorer {name!r} is not one of {sorted(SCORERS)}") from None
    return cls(trained, state)


def check_scorer(expected: str, found: str | None, source) -> None:
    """Fail unless the file `source` was made with the scorer `expected`."""
    if found is None:
        raise ScorerError(f"{source} records no scorer (made by an older version): rerun the rule that writes it")
    if found != expected:
        raise ScorerError(
            f"{source} was made with scorer {found!r}, but this step uses {expected!r} (calibration.scorer): "
            "rerun fit_error_distribution and everything after it with one scorer"
        )


def scorer_from_record(record: dict, trained, *, expected: str, source) -> Scorer:
    """The scorer an error-distribution record was fitted with (state included), checked against `expected`."""
    check_scorer(expected, record.get("scorer"), source)
    return make_scorer(record["scorer"], trained, record.get("scorer_state"))


class Views:
    """Tensors of one batch under one trained model, each computed at most once per trace, and only when asked for."""

    def __init__(self, trained, x):
        self.trained, self.x = trained, x

    @functools.cached_property
    def reconstruction(self):
        """x̂, the model's raw (unclipped) inference-mode reconstruction, float32."""
        import tensorflow as tf

        return tf.cast(self.trained.reconstruct(self.x), tf.float32)

    @functools.cached_property
    def latent(self):
        import tensorflow as tf

        return tf.cast(self.trained.encode(self.x), tf.float32)


class Scorer:
    """Per-pixel features of a batch; subclasses set the class attributes and implement `features`."""

    name: ClassVar[str]
    channels: ClassVar[tuple[str, ...]]  # one name per feature channel C
    definition: ClassVar[str]  # what the features are, recorded with the fitted Gaussian
    histogram_range: ClassVar[tuple[float, float]]  # where the features usually lie (report histograms)
    needs_fit: ClassVar[bool] = False

    def __init__(self, trained, state: dict | None = None):
        self.trained = trained
        self.state = dict(state or {})

    def features(self, views: Views):
        """float32 (N, S, S, C) features of the batch `views.x`; traceable, no Python side effects."""
        raise NotImplementedError

    def fit(self, batches: Iterable[np.ndarray]) -> None:
        """Fit `self.state` on uint8 calibrate batches (only called when `needs_fit`)."""

    def views(self, images) -> Views:
        """Views of a uint8 NHWC batch, scaled to [-1, 1] as the SavedModel scales its input."""
        return Views(self.trained, to_unit(images))

    def __call__(self, images):
        """Features of a uint8 NHWC batch."""
        return self.features(self.views(images))
