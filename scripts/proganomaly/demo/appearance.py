"""Per-slide stain and scanner appearance of the demo cohort: the variation between labs that real cohorts have.

Pure functions on arrays. An `Appearance` re-renders a slide as another lab's staining and scanner would have made
it, in the order light meets them:

1. stain (Beer-Lambert, Ruifrok & Johnston's H&E-DAB matrices, the ones skimage.color.rgb2hed uses): each pixel's
   optical density is unmixed into haematoxylin, eosin and residual concentrations, H and E are scaled
   (`h_scale`, `e_scale`) and mixed back with stain vectors turned about the grey axis (`h_hue_deg`, `e_hue_deg`:
   a hue change of the dye itself; positive turns towards red, negative towards blue);
2. optics: a slight defocus, a Gaussian of `defocus_sigma` px (at most ~0.7 px) on the transmitted light;
3. camera: a gain (`brightness`) and a saturation change about the luma (Rec. 601 weights);
4. the written pyramid's JPEG quality (`jpeg_quality`, applied by `cohort.write_cohort`, not here).

Appearances come from labs: `LABS` is a fixed design constant (it does not depend on the config seed, so every
benchmark seed sees the same stains) and each slide jitters slightly about its lab, from a stream keyed by its slide
id alone (`slide_appearance`). Labs A and B are the training labs; C and D are seen only in validation and test.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
from scipy import ndimage
from skimage import color

MAX_DEFOCUS_SIGMA = 0.7  # px: beyond this a whole slide reads as out of focus, which is an artefact, not a lab
JPEG_QUALITY_RANGE = (75, 95)
# Intensities are floored here before the log: a black pixel would be infinite density. 1/1000 of full scale
# rounds back to 0, so the identity appearance returns every uint8 value unchanged.
MIN_INTENSITY = 1e-3
LUMA = np.array([0.299, 0.587, 0.114])
GREY_AXIS = np.ones(3) / np.sqrt(3.0)
# Appearance streams are keyed by this constant and the slide id, never by the config seed.
APPEARANCE_KEY = 0x5EED57A1


@dataclasses.dataclass(frozen=True)
class Appearance:
    h_scale: float = 1.0  # haematoxylin optical density factor
    e_scale: float = 1.0  # eosin optical density factor
    h_hue_deg: float = 0.0  # haematoxylin stain vector turned about the grey axis
    e_hue_deg: float = 0.0  # eosin stain vector turned about the grey axis
    defocus_sigma: float = 0.0  # px, Gaussian on the transmitted light
    brightness: float = 1.0  # camera gain
    saturation: float = 1.0  # 1 keeps the colours, < 1 greys them, > 1 strengthens them
    jpeg_quality: int = 90  # of the written pyramid

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


IDENTITY = Appearance()

# The labs (relative to the source slide, itself an H&E skin section scanned on an Aperio at JPEG quality 30).
LABS: dict[str, Appearance] = {
    # Training lab A: close to the source, a little more haematoxylin, sharp scanner.
    "A": Appearance(1.10, 0.95, 0.0, 0.0, 0.30, 1.00, 1.00, 90),
    # Training lab B: pinker (more, redder eosin, less haematoxylin), a brighter, softer scanner.
    "B": Appearance(0.90, 1.20, -2.0, 4.0, 0.50, 1.02, 1.05, 85),
    # Unseen lab C: dark nuclei and pale eosin (1.3x H, 0.8x E), a darker, more saturated camera.
    "C": Appearance(1.30, 0.80, 3.0, 0.0, 0.40, 0.97, 1.10, 80),
    # Unseen lab D: paler and bluer (weak stains, both dyes turned towards blue), washed-out colour, soft focus,
    # strong compression.
    "D": Appearance(0.75, 0.65, -8.0, -6.0, 0.60, 1.03, 0.85, 75),
}
TRAINING_LABS = ("A", "B")

# Per-slide jitter about the lab: (log-scale sd of H/E, sd of the hue turns in degrees, sd of sigma, of gain, of
# saturation, half-range of JPEG quality). Small against the differences between labs, as for two batches of one lab.
JITTER = {"scale_log_sd": 0.04, "hue_sd": 1.0, "sigma_sd": 0.08, "brightness_sd": 0.01, "saturation_sd": 0.03,
          "quality_half_range": 3}  # fmt: skip


class AppearanceError(ValueError):
    """An appearance cannot be applied; the message says which parameter and why."""


def slide_appearance(lab: str, slide_id: str) -> Appearance:
    """The appearance of slide `slide_id` from lab `lab`: the lab's base jittered by a stream of the slide id alone."""
    if lab not in LABS:
        raise AppearanceError(f"unknown lab {lab!r}; known labs: {sorted(LABS)}")
    base = LABS[lab]
    rng = np.random.default_rng([APPEARANCE_KEY, zlib.crc32(slide_id.encode())])
    scale = np.exp(rng.normal(0.0, JITTER["scale_log_sd"], 2))
    hue = rng.normal(0.0, JITTER["hue_sd"], 2)
    sigma = float(np.clip(base.defocus_sigma + rng.normal(0.0, JITTER["sigma_sd"]), 0.0, MAX_DEFOCUS_SIGMA))
    half = JITTER["quality_half_range"]
    quality = int(np.clip(base.jpeg_quality + rng.integers(-half, half + 1), *JPEG_QUALITY_RANGE))
    return Appearance(
        h_scale=float(base.h_scale * scale[0]),
        e_scale=float(base.e_scale * scale[1]),
        h_hue_deg=float(base.h_hue_deg + hue[0]),
        e_hue_deg=float(base.e_hue_deg + hue[1]),
        defocus_sigma=sigma,
        brightness=float(base.brightness + rng.normal(0.0, JITTER["brightness_sd"])),
        saturation=float(base.saturation + rng.normal(0.0, JITTER["saturation_sd"])),
        jpeg_quality=quality,
    )


def turn_about_grey(vector: np.ndarray, degrees: float) -> np.ndarray:
    """`vector` turned by `degrees` about the grey axis (Rodrigues): its hue changes, its grey part and length not."""
    t = np.deg2rad(degrees)
    parallel = GREY_AXIS * (GREY_AXIS @ vector)
    return parallel + (vector - parallel) * np.cos(t) + np.cross(GREY_AXIS, vector) * np.sin(t)


def stain_matrix(appearance: Appearance) -> np.ndarray:
    """Rows: the H, E and residual optical-density vectors the slide is rendered with (skimage's rgb_from_hed,
    the H and E rows turned)."""
    matrix = np.array(color.rgb_from_hed, dtype=np.float64)
    matrix[0] = turn_about_grey(matrix[0], appearance.h_hue_deg)
    matrix[1] = turn_about_grey(matrix[1], appearance.e_hue_deg)
    return matrix


def check_appearance(appearance: Appearance) -> None:
    a = appearance
    if not (a.h_scale > 0 and a.e_scale > 0 and a.brightness > 0 and a.saturation >= 0):
        raise AppearanceError(f"{a}: stain scales and brightness must be > 0, saturation >= 0")
    if not 0.0 <= a.defocus_sigma <= MAX_DEFOCUS_SIGMA:
        raise AppearanceError(f"{a}: defocus_sigma must lie in [0, {MAX_DEFOCUS_SIGMA}] px")
    if not JPEG_QUALITY_RANGE[0] <= a.jpeg_quality <= JPEG_QUALITY_RANGE[1]:
        raise AppearanceError(f"{a}: jpeg_quality must lie in {list(JPEG_QUALITY_RANGE)}")


def apply_appearance(rgb: np.ndarray, appearance: Appearance) -> np.ndarray:
    """`rgb` (uint8 H×W×3) as the appearance's lab and scanner would show it; uint8 of the same shape.

    The unmixing uses the source stain vectors (skimage's hed_from_rgb), the remixing the appearance's; densities
    are not clipped at zero, so the identity appearance returns the image (within rounding).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise AppearanceError(f"expected a uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    check_appearance(appearance)
    density = -np.log(np.maximum(rgb / 255.0, MIN_INTENSITY))
    stains = density @ np.asarray(color.hed_from_rgb, dtype=np.float64)
    stains[..., 0] *= appearance.h_scale
    stains[..., 1] *= appearance.e_scale
    light = np.exp(-(stains @ stain_matrix(appearance)))
    if appearance.defocus_sigma > 0:
        light = ndimage.gaussian_filter(light, (appearance.defocus_sigma, appearance.defocus_sigma, 0), mode="nearest")
    light *= appearance.brightness
    if appearance.saturation != 1.0:
        luma = light @ LUMA
        light = luma[..., None] + appearance.saturation * (light - luma[..., None])
    return np.clip(np.rint(light * 255.0), 0, 255).astype(np.uint8)


# The eight symmetries of the square: (quarter turns counter-clockwise as np.rot90 does them, then a left-right
# mirror). A band shown under another of them is the same tissue, but no patch of it is a pixel copy.
DIHEDRAL = {
    "identity": (0, False),
    "rot90": (1, False),
    "rot180": (2, False),
    "rot270": (3, False),
    "flip": (0, True),
    "rot90+flip": (1, True),
    "rot180+flip": (2, True),
    "rot270+flip": (3, True),
}


def dihedral(image: np.ndarray, transform: str) -> np.ndarray:
    """`image` (H×W or H×W×C) under one of DIHEDRAL's transforms; a contiguous copy."""
    if transform not in DIHEDRAL:
        raise AppearanceError(f"unknown dihedral transform {transform!r}; known: {list(DIHEDRAL)}")
    turns, mirror = DIHEDRAL[transform]
    out = np.rot90(image, turns, axes=(0, 1))
    if mirror:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
