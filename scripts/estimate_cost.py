"""Estimated GPU-hours per stage of a configuration, from counted convolution FLOPs (ESTIMATES, not measurements).

    .venv/bin/python scripts/estimate_cost.py [--configfile config/paper.yaml] [--effective-tflops 30]
        [--calibrate-patches 40000] [--threshold-patches 40000] [--test-patches 200000]

FLOPs are 2 · H · W · kh · kw · c_in · c_out per conv and image (the 1×1 toRGB/fromRGB convs and the latent dense
layers included; activations, normalisation, pooling and the Mahalanobis head are left out: they are a few percent),
with the layer shapes of the original (its spec §2.1–2.4): the decoder Gd (U-Net skips double the first conv's input
channels), the image→vector networks Ge and D (minibatch stddev adds one channel at D's 4×4 base), E when created.

Training, per image of a phase at block b (the networks grown to b; a fade-in costs about the same as the stable
phase): half the batches are critic steps (G forward, D forward and backward on real and fake, the gradient penalty's
double backward ≈ 3 more D passes: G + 9 D) and half are generator steps (forward and backward through G and D:
3 G + 3 D), so 2 G + 6 D per image. Calibration, τ and inference run G forward once per patch. GPU-hours =
FLOPs / effective FLOP/s, where the effective rate (default 30 TFLOP/s: about a quarter of a V100's float16 tensor
core peak, typical for convs this size with XLA off) is the assumption that dominates the estimate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def conv(res: int, k: int, c_in: int, c_out: int) -> float:
    return 2.0 * res * res * k * k * c_in * c_out


def decoder_flops(filters, kernels, latent: int, skips, block: int) -> float:
    """Gd grown to `block`: projection dense, base convs at 4×4, block i's two convs at 4·2^i, toRGB."""
    total = 2.0 * latent * 16 * filters[0][0]
    c_prev = filters[0][0]
    for i in range(block + 1):
        res = 4 * 2**i
        c_in = c_prev * (2 if skips[i] else 1)  # the Ge activation of the same resolution is concatenated
        total += conv(res, kernels[i][0], c_in, filters[i][0]) + conv(res, kernels[i][1], filters[i][0], filters[i][1])
        c_prev = filters[i][1]
    return total + conv(4 * 2**block, 1, c_prev, 3)


def image_to_vector_flops(filters, kernels, out_dim: int, block: int, stddev: bool) -> float:
    """Ge, E or D grown to `block`: fromRGB, block i's two convs at 4·2^i (then pooling), base at 4×4, dense out."""
    res = 4 * 2**block
    total = conv(res, 1, 3, filters[block][0])
    for i in range(block, 0, -1):
        res = 4 * 2**i
        total += conv(res, 3, filters[i][0], filters[i][0]) + conv(res, 3, filters[i][0], filters[i - 1][1])
    c = filters[0][1]
    total += conv(4, 3, c + int(stddev), filters[0][0]) + conv(4, kernels[0][0], filters[0][0], filters[0][1])
    return total + 2.0 * 16 * filters[0][1] * out_dim


def network_flops(model, block: int) -> dict[str, float]:
    """Forward FLOPs per image of G (Ge + Gd [+ E]) and D grown to `block`."""
    f, k, latent = model.filters, model.kernel_sizes, model.latent_size
    ge = image_to_vector_flops(f, k, latent, block, stddev=False)
    g = ge + decoder_flops(f, k, latent, model.unet_skips, block)
    if model.create_encoder:
        g += image_to_vector_flops(f, k, latent, block, stddev=False)
    d = image_to_vector_flops(f, k, 1, block, stddev=model.minibatch_stddev.discriminator)
    return {"G": g, "D": d}


def stage_flops(config, patches: dict[str, int]) -> dict[str, float]:
    """FLOPs of training (per block, both phases), calibration (error distribution, τ) and inference."""
    out = {}
    blocks = len(config.model.filters)
    for b in range(blocks):
        n = network_flops(config.model, b)
        phases = 1 if b == 0 else 2
        out[f"train block {b} ({4 * 2**b} px)"] = phases * config.training.phase_images[b] * (2 * n["G"] + 6 * n["D"])
    g = network_flops(config.model, blocks - 1)["G"]
    out["fit_error_distribution"] = patches["calibrate"] * g
    out["fit_threshold"] = patches["threshold"] * g
    out["infer_slide (all test slides)"] = patches["test"] * g
    return out


def table(config, patches: dict[str, int], tflops: float) -> str:
    flops = stage_flops(config, patches)
    lines = ["| stage | PFLOP | GPU-hours (estimate) |", "|---|---:|---:|"]
    for name, value in flops.items():
        lines.append(f"| {name} | {value / 1e15:,.1f} | {value / (tflops * 1e12) / 3600:,.1f} |")
    train = sum(v for k, v in flops.items() if k.startswith("train"))
    lines.append(f"| training total | {train / 1e15:,.1f} | {train / (tflops * 1e12) / 3600:,.1f} |")
    return "\n".join(lines)


def merged_configs(*paths) -> dict:
    """{detector: typed config} of these files merged in order, as `snakemake --configfile` merges over the
    Snakefile's, one per entry of `detectors` (or the one detector `main`)."""
    import yaml
    from snakemake.utils import update_config

    from proganomaly.config import Config, validate_config
    from proganomaly.config.detectors import detector_configs

    data: dict = {}
    for path in paths:
        update_config(data, yaml.safe_load(Path(path).read_text()) or {})
    return {name: Config.from_dict(raw) for name, raw in detector_configs(validate_config(data)).items()}


def patch_area_um2(config, slide_mpp: float) -> float:
    """Tissue area per patch (its stride cell), µm², at a slide's mpp when the target mpp is null (level 0)."""
    mpp = config.tiling.target_mpp or slide_mpp
    return (config.tiling.stride_px * mpp) ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configfile", default="config/paper.yaml", help="merged over config/config.yaml, as snakemake")
    ap.add_argument("--effective-tflops", type=float, default=30.0)
    ap.add_argument("--calibrate-patches", type=int, default=40000)
    ap.add_argument("--threshold-patches", type=int, default=40000)
    ap.add_argument("--test-patches", type=int, default=200000)
    ap.add_argument("--slide-mpp", type=float, default=0.25, help="level-0 µm/px where a target_mpp is null")
    args = ap.parse_args()
    configs = merged_configs("config/config.yaml", args.configfile)
    first = next(iter(configs.values()))
    given = {"calibrate": args.calibrate_patches, "threshold": args.threshold_patches, "test": args.test_patches}
    # The patch counts are the first detector's; another detector tiles the same tissue, so its counts scale with
    # the tissue area of one of its patches (its stride cell).
    for name, config in configs.items():
        scale = patch_area_um2(first, args.slide_mpp) / patch_area_um2(config, args.slide_mpp)
        patches = {k: max(1, round(v * scale)) for k, v in given.items()}
        mpp = config.tiling.target_mpp or args.slide_mpp
        print(f"{args.configfile}, detector {name}: {config.tiling.patch_size_px} px at {mpp:g} µm/px "
              f"({config.tiling.patch_size_px * mpp:g} µm), {len(config.model.filters)} blocks; ESTIMATES at")  # fmt: skip
        print(f"{args.effective_tflops:g} effective TFLOP/s per GPU; patches {patches}\n")
        print(table(config, patches, args.effective_tflops))
        print()


if __name__ == "__main__":
    main()
