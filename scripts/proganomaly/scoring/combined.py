"""A combination of scorers: their per-pixel features concatenated under one joint Gaussian.

Why concatenation rather than a sum of each part's standardised (or rank-normalised) d²: the joint Gaussian is what
calibration already fits exactly in one pass, it weighs each part by what the calibrate slides say about its spread,
and it models the parts' correlation (RGB error and gradient dissimilarity both rise at the same sharp edges), so a
pixel that is unusual for both at once scores as one event instead of twice. A sum would need every part's Gaussian
first (a second pass) and treats the parts as independent. The parts share their forward passes (Views), so the
cost is that of the union of what the parts run. A part with its own state keeps it under its name.
"""

from __future__ import annotations

import tensorflow as tf

from proganomaly.scoring.base import SCORERS, Scorer, ScorerError, Views, make_scorer, register


@register
class Combined(Scorer):
    name = "combined"

    def _names(self, full: dict) -> list[str]:
        names = list(full["combined"]["scorers"])
        bad = [n for n in names if n == self.name or n not in SCORERS]
        if bad or len(set(names)) != len(names):
            raise ScorerError(
                f"scoring.combined.scorers {names}: each must be a distinct scorer of {sorted(set(SCORERS) - {self.name})}"
            )
        return names

    def select_settings(self, full: dict) -> dict:
        out = {"combined": full["combined"]}
        for name in self._names(full):
            out.update(make_scorer(name, self.trained, None, full).settings)
        return out

    def setup(self, settings: dict) -> None:
        self.parts = [make_scorer(n, self.trained, self.state.get(n), settings) for n in self._names(settings)]
        self.channels = tuple(f"{p.name}:{c}" for p in self.parts for c in p.channels)
        self.directions = tuple(d for p in self.parts for d in p.directions)
        self.definition = "concatenated features of " + "; ".join(f"{p.name} ({p.definition})" for p in self.parts)
        self.histogram_range = (
            min(p.histogram_range[0] for p in self.parts),
            max(p.histogram_range[1] for p in self.parts),
        )
        self.needs_fit = any(p.needs_fit for p in self.parts)
        self.ridge = max(p.ridge for p in self.parts) or Scorer.ridge

    def fit(self, batches) -> None:
        for part in self.parts:  # each fitting part streams the (re-iterable) calibrate batches again
            if part.needs_fit:
                part.fit(batches)
        self.state = {p.name: p.state for p in self.parts if p.state}

    def reconstruction(self, views: Views):
        return self.parts[0].reconstruction(views)

    def features(self, views: Views):
        return tf.concat([p.features(views) for p in self.parts], axis=-1)
