"""Anomaly scorers: per-pixel features of a batch under the trained model, chosen by `calibration.scorer`.

Importing this package registers every scorer module below; a new scorer is one module plus its import here.
"""

from proganomaly.scoring import (  # noqa: F401  (registration on import)
    combined,
    critic,
    encoder_features,
    gradient_similarity,
    inpainting,
    latent_distance,
    rgb_error,
    texture_baseline,
)
from proganomaly.scoring.base import (
    SCORERS,
    Scorer,
    ScorerError,
    Views,
    check_scorer,
    make_scorer,
    register,
    scorer_from_record,
)

__all__ = ["SCORERS", "Scorer", "ScorerError", "Views", "check_scorer", "make_scorer", "register", "scorer_from_record"]
