"""The anomaly-scorer interface and its registry (`calibration.scorer` → class).

A scorer maps a trained model and a batch x (float32 NHWC in [-1, 1]) to per-pixel feature vectors (N, S, S, C),
inside the traced serving and calibration functions. Calibration fits one exact streaming Gaussian to those features
over the calibrate slides; d² under it is the anomaly score that threshold, export, stitching, KDE and evaluation
use, whatever the scorer. A scorer is one module: a subclass of `Scorer` decorated with `@register`.

A scorer that needs its own fitted state (e.g. a per-location Gaussian of encoder or critic features, PaDiM-style)
sets `needs_fit`, fills `self.state` (JSON-able numbers) in `fit`, and reads it in `features`: calibration calls
`fit` on the calibrate patches before the Gaussian, the state is stored with the Gaussian, and the export bakes it
into the SavedModel as constants.

Scorer settings come from the config's `scoring` section (schema defaults when none are given); each scorer keeps
only the subsections it reads in `self.settings`, which calibration records and later steps check.
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


@functools.cache
def default_settings() -> dict:
    """The schema's defaults of the `scoring` config section (the one place they are written down), from the
    schema the config package has already parsed."""
    from proganomaly.config.build import load_schema

    def defaults(node: dict):
        if node.get("type") == "object" and "properties" in node:
            return {k: defaults(v) for k, v in node["properties"].items()}
        return node.get("default")

    return defaults(load_schema()["properties"]["scoring"])


def plain_settings(settings) -> dict:
    """The `scoring` section as a plain dict: a typed config section, a dict, or None for the defaults."""
    import dataclasses

    if settings is None:
        return default_settings()
    if dataclasses.is_dataclass(settings):
        return dataclasses.asdict(settings)
    return settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)


def make_scorer(name: str, trained, state: dict | None = None, settings=None) -> Scorer:
    """The scorer `name` of `trained`; `settings` is the config's `scoring` section (None: the defaults)."""
    try:
        cls = SCORERS[name]
    except KeyError:
        raise ScorerError(f"calibration.scorer {name!r} is not one of {sorted(SCORERS)}") from None
    return cls(trained, state, plain_settings(settings))


def check_scorer(expected: str, found: str | None, source) -> None:
    """Fail unless the file `source` was made with the scorer `expected`."""
    if found is None:
        raise ScorerError(f"{source} records no scorer (made by an older version): rerun the rule that writes it")
    if found != expected:
        raise ScorerError(
            f"{source} was made with scorer {found!r}, but this step uses {expected!r} (calibration.scorer): "
            "rerun fit_error_distribution and everything after it with one scorer"
        )


def scorer_from_record(record: dict, trained, *, expected: str, source, settings=None) -> Scorer:
    """The scorer an error-distribution record was fitted with (state and settings included), checked against
    `expected` and, when given, against the current `scoring` settings."""
    check_scorer(expected, record.get("scorer"), source)
    recorded = record.get("scorer_settings") or {}
    scorer = make_scorer(record["scorer"], trained, record.get("scorer_state"), {**default_settings(), **recorded})
    if settings is not None:
        wanted = make_scorer(record["scorer"], trained, None, settings).settings
        if _canonical(wanted) != _canonical(scorer.settings):
            raise ScorerError(
                f"{source} was fitted with scoring settings {scorer.settings}, but the config now has {wanted}: "
                "rerun fit_error_distribution and everything after it"
            )
    return scorer


def _canonical(settings: dict) -> str:
    import json

    return json.dumps(settings, sort_keys=True)


def per_patch(values, size: int):
    """Per-patch values (N,) or (N, C) as constant per-pixel features (N, size, size, C), float32."""
    import tensorflow as tf

    v = tf.cast(values, tf.float32)
    v = v[:, None] if v.shape.rank == 1 else v
    return tf.tile(v[:, None, None, :], (1, size, size, 1))


class Views:
    """Tensors of one batch under one trained model, each computed at most once per trace, and only when asked for.

    Scorers that share a view (e.g. the parts of `combined`) share its forward pass: `memo(key, fn)` caches any
    further view under a key.
    """

    def __init__(self, trained, x, images=None):
        self.trained, self.x, self._images, self._memo = trained, x, images, {}

    def memo(self, key, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    @property
    def images(self):
        """The uint8 batch (recovered exactly from x when the views were made from x alone)."""
        import tensorflow as tf

        if self._images is None:
            self._images = tf.cast(tf.round((self.x + 1.0) * 127.5), tf.uint8)
        return self._images

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
    # Relative ridge added to the covariance's diagonal (stats.gaussian_fit): 0 for the original's exact RGB
    # Gaussian; many-channel features can be (nearly) collinear, e.g. histogram bins that sum to one.
    ridge: ClassVar[float] = 1e-6
    # The `scoring` subsections this scorer reads (recorded with the Gaussian; a change forces a refit).
    setting_keys: ClassVar[tuple[str, ...]] = ()
    # Per channel, which side of the calibrate mean is anomalous: +1 larger (an error magnitude), −1 smaller (a
    # similarity, a realness score), 0 both. With calibration.one_sided the deviation from the mean is clipped to
    # that side before d² (stats.one_sided), so a patch that is "more normal than normal" scores 0 on that channel.
    # None: 0 for every channel. A scorer whose channels depend on its settings sets self.directions in `setup`.
    directions: tuple[int, ...] | None = None

    def __init__(self, trained, state: dict | None = None, settings: dict | None = None):
        self.trained = trained
        self.state = dict(state or {})
        full = plain_settings(settings)
        self.settings = self.select_settings(full)
        self.setup(full)
        self.directions = self._checked_directions()

    def _checked_directions(self) -> tuple[int, ...]:
        dirs = (0,) * len(self.channels) if self.directions is None else tuple(int(d) for d in self.directions)
        if len(dirs) != len(self.channels) or not set(dirs) <= {-1, 0, 1}:
            raise ScorerError(f"scorer {self.name!r}: directions {dirs} must be one of -1, 0, +1 per channel")
        return dirs

    def select_settings(self, full: dict) -> dict:
        """The part of the `scoring` section this scorer depends on."""
        return {k: full[k] for k in self.setting_keys}

    def setup(self, settings: dict) -> None:
        """Check the model and settings, derive fixed tensors (called once, from __init__)."""

    def features(self, views: Views):
        """float32 (N, S, S, C) features of the batch `views.x`; traceable, no Python side effects."""
        raise NotImplementedError

    def reconstruction(self, views: Views):
        """The image the detector serves as `reconstruction` (x̂ unless the scorer reconstructs otherwise)."""
        return views.reconstruction

    def fit(self, batches: Iterable[np.ndarray]) -> None:
        """Fit `self.state` on uint8 calibrate batches, a re-iterable (only called when `needs_fit`)."""

    def views(self, images) -> Views:
        """Views of a uint8 NHWC batch, scaled to [-1, 1] as the SavedModel scales its input."""
        return Views(self.trained, to_unit(images), images)

    def __call__(self, images):
        """Features of a uint8 NHWC batch."""
        return self.features(self.views(images))
