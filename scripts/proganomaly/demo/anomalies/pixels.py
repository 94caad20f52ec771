"""Pixel helpers shared by the anomaly kinds: blending, resampling, the glass colour and a nuclei density map."""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage
from skimage import color

from proganomaly.demo.anomalies.geometry import AnomalyError

DENSITY_DOWNSAMPLE = 2  # nuclei (~12 px across at 0.5 µm/px) are still separate blobs at half resolution
DENSITY_SIGMA_PX = 16.0  # level-0 px; a few nuclei wide, so single nuclei do not count as "dense tissue"
NUCLEI_QUANTILE = 0.8  # haematoxylin above this quantile of the tissue's is nucleus
NUCLEUS_AREA_PX = (40, 600)  # level-0 px²: single nuclei, not specks and not confluent dark sheets


def check_rgb(rgb: np.ndarray, name: str = "rgb") -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise AnomalyError(f"{name} must be uint8 RGB (H, W, 3), got {rgb.shape} {rgb.dtype}")


def blend(rgb: np.ndarray, alpha: np.ndarray, content: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """A copy of `rgb` with `content` (float, the window at y0, x0) mixed in by alpha; untouched where alpha is 0."""
    out = rgb.copy()
    h, w = content.shape[:2]
    a = alpha[y0 : y0 + h, x0 : x0 + w, None].astype(np.float64)
    win = out[y0 : y0 + h, x0 : x0 + w]
    mixed = np.rint(np.clip(a * content + (1.0 - a) * win, 0, 255)).astype(np.uint8)
    win[...] = np.where(a > 0, mixed, win)
    return out


def sample(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, order: int = 1) -> np.ndarray:
    """`image` (H, W, 3) read at fractional pixel coordinates, mirrored at its borders; float64."""
    coords = np.stack([ys, xs])
    return np.stack(
        [
            ndimage.map_coordinates(image[..., c].astype(np.float64), coords, order=order, mode="mirror")
            for c in range(3)
        ],
        axis=-1,
    )


def white(source: np.ndarray) -> np.ndarray:
    """The slide's glass colour per channel (its brightest percentile), the reference for optical density."""
    return np.maximum(np.percentile(source[::7, ::7].reshape(-1, 3), 99.5, axis=0), 1.0)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed noise: the slow unevenness of ink or of a fold's thickness."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / max(field.std(), 1e-9)


def orient(a: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    return np.rot90(a[:, ::-1] if flip else a, turns)


def glass_or_ink(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are bare glass (bright, unstained) or blue-green marker ink, not stained cells."""
    hsv = color.rgb2hsv(rgb)
    teal = (hsv[..., 0] > 0.3) & (hsv[..., 0] < 0.65) & (hsv[..., 1] > 0.15)
    return teal | (rgb.min(axis=-1) > 200)


def nuclei_density(
    rgb: np.ndarray, tissue: np.ndarray | None = None, downsample: int = DENSITY_DOWNSAMPLE
) -> np.ndarray:
    """Nuclei per level-0 px, smoothed over a few nuclei (float32, `rgb`'s height and width).

    Nuclei are the connected blobs of nucleus size where the haematoxylin channel (HED colour deconvolution) is in
    the tissue's top fifth; counting blobs rather than summing haematoxylin keeps out the dark, structureless keratin
    of a hair shaft and blue-green ink, which are haematoxylin-rich but hold no separate nuclei. High in the
    epidermis, low in collagenous dermis and on glass.
    """
    check_rgb(rgb)
    h, w = rgb.shape[:2]
    small = rgb[::downsample, ::downsample]
    haem = color.rgb2hed(small)[..., 0]
    stained = tissue[::downsample, ::downsample] if tissue is not None else small.min(-1) < 200
    if not stained.any():
        return np.zeros((h, w), np.float32)
    dark = ndimage.binary_opening(haem > np.quantile(haem[stained], NUCLEI_QUANTILE))
    labels, _ = ndimage.label(dark)
    area = np.bincount(labels.ravel()) * downsample**2
    keep = (area >= NUCLEUS_AREA_PX[0]) & (area <= NUCLEUS_AREA_PX[1])
    keep[0] = False
    centres = np.rint(ndimage.center_of_mass(keep[labels], labels, np.flatnonzero(keep))).astype(int).reshape(-1, 2)
    counts = np.zeros(haem.shape)
    np.add.at(counts, (centres[:, 0], centres[:, 1]), 1.0 / downsample**2)
    smooth = ndimage.gaussian_filter(counts, DENSITY_SIGMA_PX / downsample, mode="constant")
    # Slicing by the step rounds up, so the repeated map covers every level-0 row and column.
    full = np.repeat(np.repeat(smooth, downsample, 0), downsample, 1)[:h, :w]
    return full.astype(np.float32)


@functools.cache
def ihc_image() -> np.ndarray:
    """scikit-image's IHC image (DAB brown on haematoxylin), the one source of foreign stain."""
    from skimage import data

    return data.immunohistochemistry()
