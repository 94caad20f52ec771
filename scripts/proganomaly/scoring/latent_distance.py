"""The architecture's latent score per patch, broadcast to its pixels (one channel).

GANomaly: ‖Ge(x) − E(G(x))‖₂ (the original GANomaly's anomaly score; needs model.create_encoder, 2 passes of an
encoder plus Gd). Berg: ‖E(x)‖₂, the latent norm it already serves (E plus G for the reconstruction).
"""

from __future__ import annotations

from proganomaly.scoring.base import Scorer, ScorerError, Views, per_patch, register


@register
class LatentDistance(Scorer):
    name = "latent_distance"
    channels = ("latent",)
    histogram_range = (0.0, 100.0)
    # A distance (GANomaly) or a norm under an N(0, I) prior (Berg): far is anomalous, near is not.
    directions = (1,)

    def setup(self, settings: dict) -> None:
        nets = self.trained.nets
        missing = nets.latent_distance_missing()
        if missing:
            raise ScorerError(f"calibration.scorer 'latent_distance': {missing}")
        self.definition = f"{nets.latent_distance_definition} of each patch, on all its pixels"

    def features(self, views: Views):
        d = views.memo("latent_distance", lambda: self.trained.nets.latent_distance(views.x, self.trained.block))
        return per_patch(d, int(self.trained.patch_size_px))
