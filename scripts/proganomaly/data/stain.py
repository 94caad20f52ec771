"""Per-slide stain normalisation (Macenko 2009, Reinhard 2001) and HED stain jitter for training.

The stains are estimated ONCE PER SLIDE, from the tissue pixels of the tiling thumbnail (`estimate`), and every patch
of the slide is mapped with that one estimate (`normalise`). Estimating per patch, as torchstain's and StainTools'
normalisers do (their `normalize(I)` re-runs Macenko on each image it maps, with no way to pass a fixed source
estimate), would turn a patch of foreign DAB-stained tissue into H&E and hide exactly what the detector must find;
hence these ~100 lines of numpy instead of a dependency.

Conventions (all natural logarithms, float32):

- Optical density OD = −ln((I + 1) / (I0 + 1)) per RGB channel, with I0 the slide's own background (glass)
  intensity per channel: the median of the thumbnail's non-tissue pixels, or 240 (Macenko's and Veta's default) when
  fewer than `MIN_BACKGROUND_PX` of them exist or their median is darker than `MIN_BACKGROUND_LEVEL` (a slide filled
  with tissue, or dark borders). The +1 on both sides keeps log(0) away and maps the background exactly to OD 0.
- Macenko: pixels whose OD intensity (mean over channels, the paper's wording) is below β = 0.15 are dropped
  (glass; Veta's code drops a pixel when ANY channel is below β, which also drops pale pure-eosin pixels, eosin
  barely absorbing red, and pulls the eosin vector towards hematoxylin: tests/test_stain.py measured a cosine of
  0.98 instead of > 0.99 on a synthetic slide), the two leading eigenvectors of the OD
  covariance span the stain plane, the stain vectors are the directions at the 1st and 99th percentile (α = 1) of the
  angle in that plane; hematoxylin is the one with the larger red OD component (Macenko's and Veta's rule: haematoxylin
  absorbs red light, eosin barely). Concentrations are least-squares coefficients on the stain vectors, and each
  stain's maximum is its 99th percentile over the slide's tissue.
- A patch is normalised by scaling its concentrations by maxC_ref / maxC_slide and re-composing them with the
  reference stain matrix at I0_ref = 255 (white output glass). The part of the OD orthogonal to the slide's H&E plane
  (the residual of the least squares) is kept unchanged: classic Macenko drops it, which would project brown DAB,
  ink or other foreign colour onto H&E; kept, those stay visibly different, and the map is the identity when the
  slide's estimate equals the reference.
- Reference: HE_REF and MAX_C_REF are the reference H&E stain matrix and maximum concentrations of Mitko Veta's
  `normalizeStaining.m` (github.com/mitkovetta/staining-normalization), reused by HEnorm_python and torchstain, in the
  same OD convention (natural log, I0 ≈ 240).
- Reinhard: per-slide mean and std of each CIELAB channel (skimage rgb2lab: L in [0, 100]) over the thumbnail's tissue
  pixels, mapped to `reinhard_reference()`, the LAB statistics of the Macenko reference rendered over a uniform grid
  of concentrations in [0, MAX_C_REF] (a fixed convention, so that both methods aim at the same H&E look). Glass is
  kept: the mapped colour is blended into the original with weight min(mean OD / β, 1), so a pixel at the slide's
  background level stays as it is instead of being shifted with the tissue statistics.
- HED jitter (`hed_jitter`, Tellez et al. 2018, IEEE TMI 37(9):2126; Tellez et al. 2019, Med Image Anal 58:101544):
  Ruifrok & Johnston's colour deconvolution into H, E, DAB, then per patch and stain s' = α·s + β with
  α ~ U(1 − σ, 1 + σ), β ~ U(−σ, σ) (σ = 0.05 is their "HED-light", 0.2 "HED-strong"). Only H and E are jittered: a
  jittered DAB channel would teach the model that brown tissue is normal.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

METHODS = ("none", "macenko", "reinhard")
BETA = 0.15  # OD below which a pixel is glass (Macenko 2009)
ALPHA = 1.0  # angle percentile of the stain vectors (Macenko 2009)
MAX_PERCENTILE = 99.0  # percentile of the concentrations taken as their maximum
DEFAULT_I0 = 240.0
MIN_BACKGROUND_PX = 100
MIN_BACKGROUND_LEVEL = 180.0
MIN_STAIN_PX = 100
MAX_ESTIMATE_PX = 2_000_000  # a strided subsample beyond this: percentiles and covariance need no more
REF_I0 = 255.0
HE_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]], np.float32)
MAX_C_REF = np.array([1.9705, 1.0308], np.float32)
# Ruifrok & Johnston (2001) H, E, DAB optical densities per RGB channel, as skimage.color.rgb_from_hed (rows).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


class StainError(ValueError):
    """A stain estimate that cannot be used (wrong method, malformed parameters)."""


def optical_density(rgb: np.ndarray, i0) -> np.ndarray:
    """−ln((I + 1) / (I0 + 1)) per channel, float32, same shape as ``rgb``."""
    i0 = np.asarray(i0, np.float32)
    return -np.log((rgb.astype(np.float32) + 1.0) / (i0 + 1.0))


def from_optical_density(od: np.ndarray, i0=REF_I0) -> np.ndarray:
    """Inverse of `optical_density`, rounded and clipped to uint8."""
    rgb = (np.asarray(i0, np.float32) + 1.0) * np.exp(-od) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def background_intensity(rgb: np.ndarray, tissue: np.ndarray) -> tuple[list[float], str]:
    """The slide's glass intensity per channel and where it came from (see the module docstring)."""
    glass = rgb[~tissue]
    if len(glass) < MIN_BACKGROUND_PX:
        return [DEFAULT_I0] * 3, f"default {DEFAULT_I0:g}: only {len(glass)} non-tissue thumbnail pixels"
    i0 = np.median(glass.reshape(-1, 3), axis=0).astype(np.float64)
    if i0.min() < MIN_BACKGROUND_LEVEL:
        return [DEFAULT_I0] * 3, f"default {DEFAULT_I0:g}: non-tissue median {i0.round(1).tolist()} is too dark"
    return i0.tolist(), f"median of {len(glass)} non-tissue thumbnail pixels"


def _subsample(x: np.ndarray, n: int) -> np.ndarray:
    return x if len(x) <= n else x[:: int(np.ceil(len(x) / n))]


def macenko_stains(od: np.ndarray, beta: float = BETA, alpha: float = ALPHA) -> np.ndarray:
    """(3, 2) unit stain matrix, hematoxylin first, from (N, 3) tissue ODs; StainError when too few are stained."""
    stained = od[od.mean(axis=1) >= beta].astype(np.float64)
    if len(stained) < MIN_STAIN_PX:
        raise StainError(f"only {len(stained)} tissue pixels have a mean OD ≥ {beta}")
    _, vecs = np.linalg.eigh(np.cov(stained, rowvar=False))
    plane = vecs[:, [2, 1]]  # eigh sorts ascending: the two largest span the stain plane
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # eigenvectors have no sign; stains absorb (OD > 0)
    proj = stained @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    he = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1)
    return (he / np.linalg.norm(he, axis=0)).astype(np.float32)


def concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares (…, 2) concentrations of (…, 3) ODs on the (3, 2) stain matrix."""
    return od @ np.linalg.pinv(stains).T.astype(np.float32)


@functools.lru_cache(maxsize=1)
def reinhard_reference() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """LAB mean and std of the Macenko reference over a 64×64 grid of concentrations in [0, MAX_C_REF]."""
    from skimage.color import rgb2lab

    grid = np.stack(np.meshgrid(*[np.linspace(0, m, 64) for m in MAX_C_REF]), axis=-1).reshape(-1, 2)
    lab = rgb2lab(from_optical_density(grid.astype(np.float32) @ HE_REF.T)[None]).reshape(-1, 3)
    return tuple(lab.mean(axis=0).tolist()), tuple(lab.std(axis=0).tolist())


def estimate(rgb: np.ndarray, tissue: np.ndarray, *, beta: float = BETA, alpha: float = ALPHA) -> dict:
    """Macenko and Reinhard parameters of one slide from its thumbnail (H, W, 3 uint8) and tissue mask (H, W bool).

    Both methods are estimated, so that choosing one needs no new estimate. A slide with too few stained pixels gets
    the reference's Macenko parameters (a normalisation that only corrects the background) and ``status: fallback``.
    """
    from skimage.color import rgb2lab

    tissue = np.asarray(tissue, bool)
    if rgb.shape[:2] != tissue.shape:
        raise StainError(f"thumbnail {rgb.shape[:2]} and tissue mask {tissue.shape} differ in shape")
    i0, i0_source = background_intensity(rgb, tissue)
    pixels = _subsample(rgb[tissue].reshape(-1, 3), MAX_ESTIMATE_PX)
    od = optical_density(pixels, i0)
    macenko = {"status": "ok", "tissue_pixels": len(pixels)}
    try:
        stains = macenko_stains(od, beta, alpha)
        max_c = np.percentile(concentrations(od, stains), MAX_PERCENTILE, axis=0)
        if not (max_c > 0).all():
            raise StainError(f"99th-percentile concentrations {max_c.tolist()} are not positive")
    except StainError as exc:
        stains, max_c = HE_REF, MAX_C_REF
        macenko.update(status="fallback", reason=f"{exc}; the reference stains are used")
    macenko.update(stain_matrix=np.asarray(stains).tolist(), max_concentrations=np.asarray(max_c).tolist())
    reinhard = {"tissue_pixels": len(pixels)}
    if len(pixels):
        lab = rgb2lab(pixels[None]).reshape(-1, 3)
        reinhard.update(lab_mean=lab.mean(axis=0).tolist(), lab_std=np.maximum(lab.std(axis=0), 1e-3).tolist())
    else:
        reinhard.update(lab_mean=list(reinhard_reference()[0]), lab_std=list(reinhard_reference()[1]))
    return {
        "i0": [float(v) for v in i0],
        "i0_source": i0_source,
        "macenko": macenko,
        "reinhard": reinhard,
        "parameters": {"beta": beta, "alpha": alpha, "max_percentile": MAX_PERCENTILE, "od": "-ln((I+1)/(I0+1))"},
        "reference": reference(),
    }


def reference() -> dict:
    """What `normalise` maps onto, for the provenance of every estimate."""
    mean, std = reinhard_reference()
    return {
        "i0": REF_I0,
        "macenko": {"stain_matrix": HE_REF.tolist(), "max_concentrations": MAX_C_REF.tolist(),
                    "source": "M. Veta, normalizeStaining.m (as in HEnorm_python and torchstain)"},
        "reinhard": {"lab_mean": list(mean), "lab_std": list(std),
                     "source": "LAB statistics of the Macenko reference over a grid of concentrations"},
    }  # fmt: skip


def reference_params() -> dict:
    """Slide parameters equal to the reference: `normalise` with them is the identity (tests, sanity checks)."""
    ref = reference()
    return {"i0": [REF_I0] * 3, "macenko": ref["macenko"], "reinhard": ref["reinhard"]}


def normalise(batch: np.ndarray, params: dict, method: str) -> np.ndarray:
    """uint8 (…, 3) patches of one slide mapped to the reference with the slide's ``params`` (from `estimate`)."""
    if method not in METHODS:
        raise StainError(f"unknown stain normalisation {method!r} (stain.normalisation: one of {', '.join(METHODS)})")
    if method == "none":
        return batch
    try:
        i0 = np.asarray(params["i0"], np.float32)
        od = optical_density(batch, i0)
        if method == "macenko":
            stains = np.asarray(params["macenko"]["stain_matrix"], np.float32)
            max_c = np.asarray(params["macenko"]["max_concentrations"], np.float32)
            c = concentrations(od, stains)
            residual = od - c @ stains.T
            return from_optical_density((c * (MAX_C_REF / max_c)) @ HE_REF.T + residual)
        mean = np.asarray(params["reinhard"]["lab_mean"], np.float32)
        std = np.asarray(params["reinhard"]["lab_std"], np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise StainError(f"malformed stain parameters ({exc!r}); rerun tile_slide to rewrite the stain.json") from None
    from skimage.color import lab2rgb, rgb2lab

    ref_mean, ref_std = (np.asarray(v, np.float32) for v in reinhard_reference())
    lab = (rgb2lab(batch).astype(np.float32) - mean) / std * ref_std + ref_mean
    with warnings.catch_warnings():
        # Out-of-gamut LAB values are clipped into sRGB, which is what we want; skimage warns about each batch.
        warnings.simplefilter("ignore", UserWarning)
        mapped = lab2rgb(lab).astype(np.float32) * 255.0
    weight = np.clip(od.mean(axis=-1, keepdims=True) / BETA, 0.0, 1.0)
    return np.clip(np.rint(weight * mapped + (1 - weight) * batch), 0, 255).astype(np.uint8)


def hed_jitter(batch: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) patches with their H and E concentrations mapped to α·s + β ((N, 2) each, per patch).

    The numpy reference of the training pipeline's TensorFlow jitter (proganomaly.training.augment).
    """
    hed = optical_density(batch, REF_I0) @ HED_FROM_RGB
    alpha = np.asarray(alpha, np.float32)[:, None, None, :]
    beta = np.asarray(beta, np.float32)[:, None, None, :]
    hed = np.concatenate([hed[..., :2] * alpha + beta, hed[..., 2:]], axis=-1)
    return from_optical_density(hed @ RGB_FROM_HED)


def read_estimate(path: str | Path) -> dict:
    """A slide's stain.json (written by tile_slide), checked for the keys `normalise` reads."""
    try:
        params = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StainError(f"{path}: stain estimate does not exist; rerun tile_slide for this slide") from None
    except json.JSONDecodeError as err:
        raise StainError(f"{path}: stain estimate is not valid JSON ({err}); delete it and rerun tile_slide") from None
    missing = [k for k in ("i0", "macenko", "reinhard") if k not in params]
    if missing:
        raise StainError(f"{path}: stain estimate lacks {missing}; delete it and rerun tile_slide")
    return params


def slide_normaliser(method: str, path: str | Path | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """The patch map of one slide for ``stain.normalisation``, from its stain.json; None for none (read as is)."""
    if method not in METHODS:
        raise StainError(f"unknown stain normalisation {method!r} (stain.normalisation: one of {', '.join(METHODS)})")
    if method == "none":
        return None
    if not path:
        raise StainError(f"stain.normalisation is {method} but the rule was given no stain estimate (stain.json)")
    return functools.partial(normalise, params=read_estimate(path), method=method)
