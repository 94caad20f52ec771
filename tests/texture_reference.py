"""Test reference of the texture_baseline scorer: the same features with scikit-image itself, in numpy.

The scorer (proganomaly.scoring.texture_baseline) computes them in TensorFlow inside the detector; this module is
what it is tested against, together with a ridge Gaussian for patch-level d². Each patch is described by 20 colour and texture numbers that need no training: the mean and standard deviation of
its haematoxylin, eosin and DAB densities (colour deconvolution, `skimage.color.rgb2hed`), the mean and standard
deviation of its grey-level gradient magnitude (Sobel) at full and at half resolution, and the histogram of its
rotation-invariant uniform local binary patterns (P=8, R=1: ten codes). A Gaussian fitted to the patches of the
normal calibrate slides scores every patch by its squared Mahalanobis distance d²; `pixel_map` spreads those onto
pixels. Pure numpy / scipy / scikit-image, no model, no registry.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from skimage import color, filters
from skimage.feature import local_binary_pattern

LBP_P, LBP_R = 8, 1
LBP_BINS = LBP_P + 2  # "uniform" codes 0..P count the ones of a uniform pattern; P + 1 is every other pattern
GRADIENT_SCALES = (1, 2)  # block-mean downsampling factors: cell edges at 1, nuclei and bundles at 2
FEATURE_NAMES = (
    *(f"{stain}_{stat}" for stat in ("mean", "std") for stain in ("hematoxylin", "eosin", "dab")),
    *(f"gradient_x{s}_{stat}" for s in GRADIENT_SCALES for stat in ("mean", "std")),
    *(f"lbp_{code}" for code in range(LBP_BINS)),
)
N_FEATURES = len(FEATURE_NAMES)
RIDGE = 1e-3  # relative to each feature's variance; the LBP bins sum to one, so the raw covariance is singular


class Gaussian(NamedTuple):
    mean: np.ndarray  # (d,)
    cov: np.ndarray  # (d, d), ridge included
    precision: np.ndarray  # (d, d), the inverse of cov


def _check_patch(patch: np.ndarray) -> None:
    if patch.ndim != 3 or patch.shape[2] != 3 or patch.dtype != np.uint8:
        raise ValueError(f"patch must be uint8 RGB (H, W, 3), got {patch.shape} {patch.dtype}")
    if min(patch.shape[:2]) < 2 * max(GRADIENT_SCALES) + 1:
        raise ValueError(f"patch of {patch.shape[1]}×{patch.shape[0]} px is too small for the texture features")


def _downsample(grey: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return grey
    h, w = (grey.shape[0] // factor) * factor, (grey.shape[1] // factor) * factor
    return grey[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def patch_features(patch: np.ndarray) -> np.ndarray:
    """The N_FEATURES statistics of one uint8 RGB patch, in FEATURE_NAMES' order (float64).

    Computed on the patch alone, so a patch's features never depend on its neighbours. LBP codes of the outermost
    ring of pixels are left out of the histogram: their neighbours lie outside the patch.
    """
    _check_patch(patch)
    hed = color.rgb2hed(patch).reshape(-1, 3)
    grey = color.rgb2gray(patch)
    gradients = []
    for factor in GRADIENT_SCALES:
        magnitude = filters.sobel(_downsample(grey, factor))
        gradients += [magnitude.mean(), magnitude.std()]
    # Integer grey levels: LBP compares neighbours for equality, which float noise would make arbitrary.
    codes = local_binary_pattern(np.rint(grey * 255).astype(np.uint8), LBP_P, LBP_R, method="uniform")
    inner = codes[LBP_R:-LBP_R, LBP_R:-LBP_R].astype(np.int64).ravel()
    histogram = np.bincount(inner, minlength=LBP_BINS)[:LBP_BINS] / inner.size
    return np.concatenate([hed.mean(axis=0), hed.std(axis=0), gradients, histogram])


def fit_gaussian(features: np.ndarray, ridge: float = RIDGE) -> Gaussian:
    """Mean and covariance of calibrate features, each variance raised by `ridge` times itself so cov inverts."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need a (n >= 2, d) feature array to fit a Gaussian, got {features.shape}")
    mean = features.mean(axis=0)
    cov = np.cov(features, rowvar=False)
    # A variance-free feature (for example an LBP code that never occurs) still needs a positive diagonal.
    floor = max(float(np.mean(np.diag(cov))), 1e-12) * 1e-6
    cov = cov + np.diag(ridge * np.diag(cov) + floor)
    return Gaussian(mean, cov, np.linalg.inv(cov))


def mahalanobis_d2(features: np.ndarray, gaussian: Gaussian) -> np.ndarray:
    """Squared Mahalanobis distance of each row of `features` to the fitted Gaussian, (N,)."""
    diff = np.asarray(features, dtype=np.float64) - gaussian.mean
    return np.einsum("ni,ij,nj->n", diff, gaussian.precision, diff)
