"""Constraints between keys that the schema cannot state; checked once, when the workflow is parsed."""

from __future__ import annotations

from proganomaly.config.build import ConfigError
from proganomaly.config.sections import Config


def num_blocks(patch_size_px: int) -> int:
    """Growth blocks of the progressive GAN: the base at 4 px, then one per doubling up to the patch size."""
    return max(int(patch_size_px).bit_length() - 2, 1)


def check_cross_keys(cfg: Config) -> None:
    """Raise ConfigError naming the keys of the first constraint the config breaks."""
    patch = cfg.tiling.patch_size_px
    cfg.records.resolutions(patch)
    if 4 * 2 ** (num_blocks(patch) - 1) != patch:
        raise ConfigError(f"tiling.patch_size_px={patch} is not 4 times a power of two (the GAN grows from 4 px)")
    interior = patch - 2 * cfg.calibration.border_px
    if interior <= 0 or cfg.tiling.stride_px > interior:
        raise ConfigError(
            f"tiling.stride_px={cfg.tiling.stride_px} must be at most tiling.patch_size_px - 2 * calibration.border_px"
            f" = {interior}, or the maps get uncovered gaps along patch edges; lower the stride or the border"
        )
    blocks = num_blocks(patch)
    per_block = {
        "model.filters": cfg.model.filters,
        "model.kernel_sizes": cfg.model.kernel_sizes,
        "model.unet_skips": cfg.model.unet_skips,
        "training.batch_sizes": cfg.training.batch_sizes,
        "training.phase_images": cfg.training.phase_images,
    }
    for key, values in per_block.items():
        if len(values) < blocks:
            raise ConfigError(
                f"{key} has {len(values)} entries; tiling.patch_size_px={patch} needs one per block, {blocks} blocks"
            )
    _check_replicas(cfg, blocks)
    _check_batch_split(cfg)
    if cfg.model.architecture == "berg" and not cfg.model.create_encoder:
        raise ConfigError("model.architecture 'berg' needs the encoder E: set model.create_encoder: true")
    _check_scorers(cfg, blocks)


def scorers_used(cfg: Config) -> list[str]:
    """calibration.scorer, or the parts of a combined scorer (the ones whose settings matter)."""
    name = cfg.calibration.scorer
    return list(cfg.scoring.combined.scorers) if name == "combined" else [name]


def _check_scorers(cfg: Config, blocks: int) -> None:
    """What the scorers would refuse in fit_error_distribution, after training: checked here, before any job."""
    used, sc, patch = scorers_used(cfg), cfg.scoring, cfg.tiling.patch_size_px
    via = "" if cfg.calibration.scorer != "combined" else " (a part of scoring.combined.scorers)"
    parts = list(sc.combined.scorers)
    if cfg.calibration.scorer == "combined" and ("combined" in parts or len(set(parts)) != len(parts)):
        raise ConfigError(f"scoring.combined.scorers {parts}: each must be a distinct scorer other than combined")
    inpaints = "inpainting" in used or ("gradient_similarity" in used and sc.gradient_similarity.source == "inpainting")
    if inpaints:
        block, masks = sc.inpainting.block_px, sc.inpainting.masks
        if patch % block:
            raise ConfigError(
                f"scoring.inpainting.block_px={block} does not divide tiling.patch_size_px={patch}{via}: the masks hide"
                " whole blocks; use a divisor of the patch size"
            )
        if (patch // block) ** 2 < masks:
            raise ConfigError(
                f"scoring.inpainting.masks={masks} exceeds the {(patch // block) ** 2} blocks of"
                f" scoring.inpainting.block_px={block} in a {patch} px patch{via}; use fewer masks or smaller blocks"
            )
    if "encoder_features" in used:
        layers = list(sc.encoder_features.layers)
        if max(layers) > blocks - 1:
            raise ConfigError(
                f"scoring.encoder_features.layers {layers}{via}: a tiling.patch_size_px={patch} model has {blocks}"
                f" blocks, so depths 0..{blocks - 1} below the input; drop the deeper layers"
            )
    if "latent_distance" in used and cfg.model.architecture == "ganomaly" and not cfg.model.create_encoder:
        raise ConfigError(
            f"calibration.scorer latent_distance{via} needs GANomaly's second encoder E (‖Ge(x) − E(G(x))‖):"
            " set model.create_encoder: true (before training), or choose another scorer"
        )


def _check_replicas(cfg: Config, blocks: int) -> None:
    """Each replica of a MirroredStrategy takes an equal share of every global batch."""
    gpus = cfg.resources.gpus.training
    ms = cfg.model.minibatch_stddev
    group = ms.group_size if ms.group_size > 0 else 4
    for block, batch in enumerate(cfg.training.batch_sizes[:blocks]):
        if batch % gpus:
            raise ConfigError(
                f"training.batch_sizes[{block}]={batch} does not divide by resources.gpus.training={gpus}: every GPU"
                " takes an equal share of each batch; use multiples of the GPU count (or fewer GPUs)"
            )
        per = batch // gpus
        # The layer quietly makes the whole batch one group when G does not divide it; across replicas that would
        # change which examples share a statistic with the GPU count, so ask for a fitting size instead.
        if gpus > 1 and ms.discriminator and per > group and per % group:
            raise ConfigError(
                f"training.batch_sizes[{block}]={batch} gives {per} per GPU on resources.gpus.training={gpus}, not a"
                f" multiple of model.minibatch_stddev.group_size={group}; change the batch size or the group size"
            )


def _check_batch_split(cfg: Config) -> None:
    """Calibration and inference split each batch over their GPUs (MirroredStrategy, or the detector's split)."""
    for batch_key, batch, gpus_key, gpus in (
        ("calibration.batch_size", cfg.calibration.batch_size, "resources.gpus.calibration", cfg.resources.gpus.calibration),
        ("inference.batch_size", cfg.inference.batch_size, "resources.gpus.inference", cfg.resources.gpus.inference),
    ):  # fmt: skip
        if batch % gpus:
            raise ConfigError(
                f"{batch_key}={batch} does not divide by {gpus_key}={gpus}: every GPU takes an equal share of each"
                " batch; use a multiple of the GPU count (or fewer GPUs)"
            )
