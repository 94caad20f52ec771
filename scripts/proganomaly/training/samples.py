"""Per-phase PNG grids of sample reconstructions for the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float → uint8 (clipped before the cast)."""
    return np.clip(np.rint((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(rows: list[np.ndarray], cell: int = 64, pad: int = 2) -> np.ndarray:
    """Stack rows of images (each (n, r, r, 3) in [-1, 1]) into one uint8 image, nearest-upscaled to `cell` px."""
    n = max(len(r) for r in rows)
    out = np.full((len(rows) * (cell + pad) + pad, n * (cell + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(to_uint8(row)):
            f = max(cell // img.shape[0], 1)
            big = np.repeat(np.repeat(img, f, axis=0), f, axis=1)[:cell, :cell]
            y, x = pad + i * (cell + pad), pad + j * (cell + pad)
            out[y : y + big.shape[0], x : x + big.shape[1]] = big
    return out


def write_png(path: str | Path, image: np.ndarray) -> None:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(image).save(tmp)
    tmp.replace(path)
