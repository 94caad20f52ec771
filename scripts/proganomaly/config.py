"""The typed view of the validated configuration.

Defaults live in ``workflow/schemas/config.schema.yaml`` only: the dataclasses below have no defaults, so a config
that skipped validation fails loudly here instead of running with a second, divergent set of defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
SLIDES_SCHEMA = SCHEMA_DIR / "slides.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names its path."""


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    wheel: str
    member: str
    sha256: str | None
    mpp: float
    foreign_per_slide: int
    foreign_size_px: tuple[int, int]
    tile_px: int
    jpeg_quality: int


@dataclasses.dataclass(frozen=True)
class TissueConfig:
    method: str
    saturation_threshold: float
    closing_um: float
    min_object_um2: float
    min_hole_um2: float


@dataclasses.dataclass(frozen=True)
class TilingConfig:
    patch_size_px: int
    target_mpp: float | None
    stride_px: int
    min_tissue_fraction: float
    thumbnail_mpp: float
    tissue: TissueConfig


@dataclasses.dataclass(frozen=True)
class RecordsConfig:
    min_size_px: int
    shard_max_examples: int
    downscale_method: str

    def resolutions(self, patch_size_px: int) -> list[int]:
        """Resolutions written for a patch size: min_size_px, 2·min_size_px, … patch_size_px."""
        sizes, size = [], self.min_size_px
        while size <= patch_size_px:
            sizes.append(size)
            size *= 2
        if not sizes or sizes[-1] != patch_size_px:
            raise ConfigError(
                f"tiling.patch_size_px={patch_size_px} is not records.min_size_px={self.min_size_px} times a power of two"
            )
        return sizes


@dataclasses.dataclass(frozen=True)
class MinibatchStddevConfig:
    discriminator: bool
    encoders: bool
    group_size: int
    averaging: bool


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    percent: float
    block_random_shift: int
    fill: str


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    distribution: str
    scale: float


@dataclasses.dataclass(frozen=True)
class GeneratorLossWeights:
    """Loss weights of G (both architectures' terms; each reads its own)."""

    kernel_l1: float
    kernel_l2: float
    D_of_G_of_x: float
    x_minus_G_of_x_l1: float
    x_minus_G_of_x_l2: float
    Ge_of_x_minus_E_of_G_of_x_l1: float
    Ge_of_x_minus_E_of_G_of_x_l2: float
    D_of_G_of_z: float
    D_of_G_of_E_of_x: float
    D_of_G_of_E_of_G_of_z: float
    z_minus_E_of_G_of_z_l1: float
    z_minus_E_of_G_of_z_l2: float
    G_of_z_minus_G_of_E_of_G_of_z_l1: float
    G_of_z_minus_G_of_E_of_G_of_z_l2: float
    E_of_x_minus_E_of_G_of_E_of_x_l1: float
    E_of_x_minus_E_of_G_of_E_of_x_l2: float
    x_minus_G_of_E_of_x_l1: float
    x_minus_G_of_E_of_x_l2: float


@dataclasses.dataclass(frozen=True)
class EncoderLossWeights:
    """Loss weights of E."""

    kernel_l1: float
    kernel_l2: float
    Ge_of_x_minus_E_of_G_of_x_l1: float
    Ge_of_x_minus_E_of_G_of_x_l2: float
    D_of_G_of_E_of_x: float
    D_of_G_of_E_of_G_of_z: float
    z_minus_E_of_G_of_z_l1: float
    z_minus_E_of_G_of_z_l2: float
    G_of_z_minus_G_of_E_of_G_of_z_l1: float
    G_of_z_minus_G_of_E_of_G_of_z_l2: float
    E_of_x_minus_E_of_G_of_E_of_x_l1: float
    E_of_x_minus_E_of_G_of_E_of_x_l2: float
    x_minus_G_of_E_of_x_l1: float
    x_minus_G_of_E_of_x_l2: float


@dataclasses.dataclass(frozen=True)
class DiscriminatorLossWeights:
    """Loss weights of the critic D."""

    kernel_l1: float
    kernel_l2: float
    D_of_x: float
    D_of_G_of_x: float
    D_of_G_of_z: float
    D_of_G_of_E_of_x: float
    D_of_G_of_E_of_G_of_z: float


@dataclasses.dataclass(frozen=True)
class LossWeights:
    generator: GeneratorLossWeights
    encoder: EncoderLossWeights
    discriminator: DiscriminatorLossWeights


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str
    filters: list[list[int]]
    kernel_sizes: list[list[int]]
    latent_size: int
    normalize_latents: bool
    use_pixel_norm: bool
    pixel_norm_epsilon: float
    leaky_relu_alpha: float
    equalized_learning_rate: bool
    final_activation: str
    unet_skips: list[bool]
    create_encoder: bool
    minibatch_stddev: MinibatchStddevConfig
    mask: MaskConfig
    z_noise: NoiseConfig
    fake_noise: NoiseConfig
    berg_latent_mean: float
    berg_latent_stddev: float
    normalize_reconstruction_losses: bool
    gradient_penalty_coefficient: float
    gradient_penalty_target: float
    epsilon_drift: float
    loss_weights: LossWeights


@dataclasses.dataclass(frozen=True)
class AdamConfig:
    learning_rate: float
    beta1: float
    beta2: float
    epsilon: float
    clip_norm: float | None


@dataclasses.dataclass(frozen=True)
class OptimizersConfig:
    generator: AdamConfig
    encoder: AdamConfig
    discriminator: AdamConfig


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    batch_sizes: list[int]
    phase_images: list[int]
    checkpoint_every_images: int
    keep_checkpoints: int
    log_every_steps: int
    max_nan_rollbacks: int
    precision: str
    jit_compile: bool
    heldout_examples: int
    sample_images: int
    save_phase_weights: bool
    optimizers: OptimizersConfig


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    batch_size: int
    prefetch_batches: int


@dataclasses.dataclass(frozen=True)
class KdeConfig:
    method: str
    bandwidth_um: float
    truncate: float
    min_object_um2: float
    ceiling: float
    patch_bandwidth_px: float
    patch_bins: int
    patch_min_object_px: int
    patch_min_points: int
    patch_scaling_factor: float
    patch_scaling_power: float


@dataclasses.dataclass(frozen=True)
class StitchingConfig:
    downsample: int
    tile_px: int
    rgb_compression: str
    overview_max_px: int
    work_tile_px: int
    kde: KdeConfig


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    scorer: str
    border_px: int
    batch_size: int
    error_histogram_bins: int
    d2_bins_per_decade: int
    threshold_method: str
    k_std: float
    f_beta: float
    supervised_max_exact_pixels: int
    annotation_classes: list[str] | None
    jit_compile: bool


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    jit_compile: bool


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    splits: list[str]
    map_max_px: int
    loss_smoothing: int


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    splits: list[str]
    pool_splits: list[str]
    thresholds: list[float]
    dilations: list[float]
    dilation_mode: str
    dilation_origin: str
    contour_tolerance_px: float
    beta: float
    annotation_classes: list[str] | None
    annotation_mask_downsample: float | None
    operating_point: str
    operating_threshold: float
    operating_dilation: float
    class_name: str
    class_color: list[int]
    max_pixels: int
    curve_points: int


@dataclasses.dataclass(frozen=True)
class Config:
    slides: str
    seed: int
    demo: DemoConfig
    tiling: TilingConfig
    records: RecordsConfig
    model: ModelConfig
    training: TrainingConfig
    calibration: CalibrationConfig
    export: ExportConfig
    inference: InferenceConfig
    stitching: StitchingConfig
    evaluation: EvaluationConfig
    report: ReportConfig

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """Build the typed config from a dict that has already been validated (defaults filled)."""
        return _build(cls, data, "config")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}")
        missing = sorted(names - set(value))
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing} (was the config validated against the schema?)")
        return tp(**{name: _build(hints[name], value[name], f"{where}.{name}") for name in names})
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(inner[0], value, where)
    if origin is tuple:
        return tuple(
            _build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(typing.get_args(tp), value, strict=True))
        )
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp in (int, float, str, bool) and not isinstance(value, tp)) or (
        tp in (int, float) and isinstance(value, bool)
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def validate_config(data: dict) -> dict:
    """Validate a raw config dict against the schema, filling defaults in place (as the workflow does)."""
    import jsonschema
    import yaml
    from snakemake.utils import validate

    schema = yaml.safe_load(CONFIG_SCHEMA.read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"config key {key}: {error.message}")
    validate(data, schema=str(CONFIG_SCHEMA), set_default=True)
    return data


def load_config(path: str | Path) -> Config:
    """Read, validate and type a config file (for tests and running scripts by hand)."""
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    return Config.from_dict(validate_config(data))
