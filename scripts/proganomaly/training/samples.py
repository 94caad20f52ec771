"""Per-phase PNG grids of sample reconstructions for the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from proganomaly.common.io import atomic_path
from proganomaly.common.pixels import to_uint8
from proganomaly.model.masks import mask_images
from proganomaly.training.heldout import reconstruct
from proganomaly.training.steps import to_float


def grid(rows: list[np.ndarray], cell: int = 64, pad: int = 2) -> np.ndarray:
    """Stack rows of images (each (n, r, r, 3) in [-1, 1]) into one uint8 image, nearest-upscaled to `cell` px."""
    n = max(len(r) for r in rows)
    out = np.full((len(rows) * (cell + pad) + pad, n * (cell + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(to_uint8(np.asarray(row, np.float32))):
            f = max(cell // img.shape[0], 1)
            big = np.repeat(np.repeat(img, f, axis=0), f, axis=1)[:cell, :cell]
            y, x = pad + i * (cell + pad), pad + j * (cell + pad)
            out[y : y + big.shape[0], x : x + big.shape[1]] = big
    return out


def write_png(path: str | Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path, ".tmp.png") as tmp:
        Image.fromarray(image).save(tmp)


def sample_rows(nets, x: np.ndarray, block: int, mask_cfg, seed: int) -> list[np.ndarray]:
    """Rows of one grid: x and x̂; where the generator sees masked inputs also the masked x and its reconstruction."""
    xf = to_float(tf.constant(x))
    rows = [xf.numpy()]
    if nets.masks_input and mask_cfg.percent > 0:
        masked = mask_images(xf, tf.constant([seed, 0], tf.int64), percent=mask_cfg.percent,
                             shift=mask_cfg.block_random_shift, fill=mask_cfg.fill)[0]  # fmt: skip
        rows += [
            masked.numpy(),
            reconstruct(nets, x, block),
            tf.cast(nets.reconstruct(masked, block), tf.float32).numpy(),
        ]
    else:
        rows.append(reconstruct(nets, x, block))
    return rows


class SampleGrids:
    """Writes one grid per phase into `directory`."""

    def __init__(self, nets, mask_cfg, seed: int, directory: Path, cell: int):
        self.nets, self.mask_cfg, self.seed, self.dir, self.cell = nets, mask_cfg, seed, Path(directory), cell

    def write(self, x: np.ndarray, block: int, phase_index: int, phase_name: str) -> None:
        rows = sample_rows(self.nets, x, block, self.mask_cfg, self.seed)
        write_png(self.dir / f"phase{phase_index:02d}_{phase_name}.png", grid(rows, cell=self.cell))
